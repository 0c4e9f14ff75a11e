package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/internal/pgserver"
)

// Sweep removes namespaces and links that a run of this package left
// behind (those whose run ID has no live owner process), and the
// PostgreSQL servers recorded by TrackServer in a process that is gone.
// What live runs own, and anything not created by this package, is left
// alone.
func Sweep(ctx context.Context, logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var errs []error
	out, err := ipOutput(ctx, "netns", "list")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		m := ownedName.FindStringSubmatch(name)
		if m == nil || ownerAlive(m[1]) {
			continue
		}
		logf("chaos: sweeping leftover namespace %s", name)
		killNamespace(ctx, name, logf)
		if err := ipRun(ctx, "netns", "del", name); err != nil {
			errs = append(errs, err)
		}
	}
	out, err = ipOutput(ctx, "-o", "link", "show")
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, line := range strings.Split(out, "\n") {
		// "12: gcx1a2b-h1@if11: <BROADCAST,...>"
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(fields[1], ":"), "@")
		m := ownedName.FindStringSubmatch(name)
		if m == nil || ownerAlive(m[1]) {
			continue
		}
		logf("chaos: sweeping leftover link %s", name)
		if err := ipRun(ctx, "link", "del", name); err != nil && linkExists(ctx, name) {
			errs = append(errs, err)
		}
	}
	if err := sweepServers(logf); err != nil {
		errs = append(errs, err)
	}
	entries, _ := os.ReadDir(ownersDir())
	for _, e := range entries {
		id := strings.TrimSuffix(e.Name(), ".owner")
		if id != e.Name() && !ownerAlive(id) {
			_ = os.Remove(filepath.Join(ownersDir(), e.Name()))
		}
	}
	return errors.Join(errs...)
}

// killNamespace SIGKILLs every process in namespace ns (agents of a run
// that died, or of this one at Close).
func killNamespace(ctx context.Context, ns string, logf func(format string, args ...any)) {
	out, err := ipOutput(ctx, "netns", "pids", ns)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 {
			continue
		}
		logf("chaos: killing pid %d left in namespace %s", pid, ns)
		_ = syscall.Kill(pid, syscall.SIGCONT)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Give the kernel a moment to reap them, so the namespace can go.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, err := ipOutput(ctx, "netns", "pids", ns)
		if err != nil || strings.TrimSpace(out) == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TrackServer records a PostgreSQL server this process started, so that
// Sweep can stop it and remove its directory should this process die
// without cleaning up. UntrackServer forgets it after a clean stop.
func TrackServer(s *pgserver.Server) error {
	serversMu.Lock()
	defer serversMu.Unlock()
	if err := os.MkdirAll(ownersDir(), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", ownersDir(), err)
	}
	f, err := os.OpenFile(serversFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("record server: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
		fmt.Fprintf(f, "%d %s\n", os.Getpid(), startTime(os.Getpid()))
	}
	if _, err := fmt.Fprintln(f, s.Dir); err != nil {
		return fmt.Errorf("record server: %w", err)
	}
	return nil
}

// UntrackServer forgets a server recorded by TrackServer.
func UntrackServer(s *pgserver.Server) {
	serversMu.Lock()
	defer serversMu.Unlock()
	b, err := os.ReadFile(serversFile())
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var keep []string
	for i, l := range lines {
		if i == 0 || l != s.Dir {
			keep = append(keep, l)
		}
	}
	if len(keep) <= 1 {
		_ = os.Remove(serversFile())
		return
	}
	_ = os.WriteFile(serversFile(), []byte(strings.Join(keep, "\n")+"\n"), 0o644)
}

var serversMu sync.Mutex

func serversFile() string {
	return filepath.Join(ownersDir(), fmt.Sprintf("pg-%d.servers", os.Getpid()))
}

// sweepServers stops the PostgreSQL servers that dead processes recorded
// with TrackServer and removes their directories.
func sweepServers(logf func(format string, args ...any)) error {
	files, _ := filepath.Glob(filepath.Join(ownersDir(), "pg-*.servers"))
	var errs []error
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		owner := strings.Fields(lines[0])
		if len(owner) == 2 {
			if pid, err := strconv.Atoi(owner[0]); err == nil && startTime(pid) == owner[1] {
				continue // its owner still runs
			}
		}
		for _, dir := range lines[1:] {
			if dir == "" || !strings.HasPrefix(filepath.Base(dir), "geocursor-pg-") {
				continue
			}
			logf("chaos: sweeping leftover PostgreSQL server in %s", dir)
			stopPostmaster(dir)
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, err)
			}
		}
		_ = os.Remove(file)
	}
	return errors.Join(errs...)
}

// stopPostmaster shuts down (immediately) the server whose data directory
// is dir/data, if it runs.
func stopPostmaster(dir string) {
	data := filepath.Join(dir, "data")
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		return
	}
	// Only a postgres process running on that very directory.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), data) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGQUIT) // immediate shutdown
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func ownersDir() string { return filepath.Join(os.TempDir(), "geocursor-chaos-owners") }

func ownerFile(id string) string { return filepath.Join(ownersDir(), id+".owner") }

// lockOwners serialises network setup between concurrent runs on one
// machine (choosing a run ID and a subnet, sweeping).
func lockOwners() (func(), error) {
	if err := os.MkdirAll(ownersDir(), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", ownersDir(), err)
	}
	f, err := os.OpenFile(filepath.Join(ownersDir(), "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// claimID picks an unused run ID and records this process as its owner.
func claimID() (string, error) {
	for range 100 {
		id := fmt.Sprintf("%04x", rand.IntN(0x10000))
		if _, err := os.Stat(ownerFile(id)); err == nil {
			continue
		}
		me := fmt.Sprintf("%d %s\n", os.Getpid(), startTime(os.Getpid()))
		if err := os.WriteFile(ownerFile(id), []byte(me), 0o644); err != nil {
			return "", fmt.Errorf("record run owner: %w", err)
		}
		return id, nil
	}
	return "", errors.New("no free run ID")
}

// ownerAlive reports whether the process that created run id still runs
// (same PID and same start time, so a reused PID does not count).
func ownerAlive(id string) bool {
	b, err := os.ReadFile(ownerFile(id))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return false
	}
	return startTime(pid) == f[1]
}

// startTime is field 22 of /proc/PID/stat: when the process started, in
// clock ticks since boot; "" if there is no such process.
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; it ends at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}
