package systemtest

import (
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The packaging in dist/ (issue 12): the unit file verifies, and the
// static build the image makes runs and says what it was built from.

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// buildStatic builds geocursor as dist/docker/Dockerfile does.
func buildStatic(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "geocursor")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version=v9.9.9-test -X main.commit=0123456789ab", "-o", out, "./cmd/geocursor")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, b)
	}
	return out
}

func TestStaticBuildForTheImage(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image is linux")
	}
	bin := buildStatic(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s asks for a dynamic loader: not static, it would not run on distroless/static", bin)
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "geocursor v9.9.9-test (") || !strings.Contains(string(out), "commit 0123456789ab") {
		t.Errorf("geocursor version: %q, %v; want the release and commit from -ldflags", out, err)
	}
}

func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot(t), "dist", "systemd", "geocursor.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{"ProtectSystem=strict", "ReadWritePaths=/var/lib/geocursor", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "User=geocursor", "NoNewPrivileges=yes"} {
		if !strings.Contains(text, want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	// verify checks that ExecStart's binary exists: point it at a real one.
	bin := filepath.Join(t.TempDir(), "geocursor")
	if err := os.Symlink(buildStatic(t), bin); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "geocursor.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(text, "/usr/local/bin/geocursor", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
