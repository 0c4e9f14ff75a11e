// Package devcluster runs real `geocursor agent` processes for the demo,
// the benchmark, and (through internal/testsupport and internal/chaos) the
// system and fault tests. It owns everything about those processes:
// building the binary, choosing ports, writing config files, starting
// (directly or through a wrapper such as `ip netns exec`), signalling,
// pausing, restarting and waiting for them, and asking them for their
// status and sending them commands, through api.Client like every other
// caller. Its Cluster and WaitFor are the harness's one group of agents
// and one wait.
//
// It must not depend on package testing: functions return errors, and
// testsupport turns them into test failures. It holds no product logic; it
// only drives the binary from the outside, as an operator would.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build builds ./cmd/geocursor of the module that holds the working
// directory into outDir/geocursor, creating outDir, and returns the
// binary's path.
func Build(ctx context.Context, outDir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", outDir, err)
	}
	out := filepath.Join(outDir, "geocursor")
	args := []string{"build", "-o", out}
	if c := gitCommit(ctx, root); c != "" {
		// GOFLAGS=-buildvcs=false (CI sets it) drops Go's own VCS stamp.
		args = append(args, "-ldflags", "-X main.commit="+c)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/geocursor")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/geocursor: %v\n%s", err, b)
	}
	return out, nil
}

// gitCommit is the checkout's commit, with -dirty for uncommitted changes,
// or "" outside a git checkout.
func gitCommit(ctx context.Context, dir string) string {
	cmd := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty", "--abbrev=12", "--exclude", "*")
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// moduleRoot walks up from the working directory to the directory that
// holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
