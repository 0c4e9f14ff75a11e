// Package childproc runs the throwaway servers the tests and scripts start
// (PostgreSQL, Redis, Sidekiq): a child process with its output in a log
// file, stopped with SIGTERM then SIGKILL, a free loopback port for it,
// and the end of its log for an error message.
package childproc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// LogTailBytes is how much of a server's log an error carries.
const LogTailBytes = 4096

// Process is one run of a server binary.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done is closed
}

// Start starts bin with args in dir, its stdout and stderr appended to
// logFile. env nil means this process's environment.
func Start(bin string, args, env []string, dir, logFile string) (*Process, error) {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", logFile, err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group: a Ctrl-C meant for the test run should not
	// reach the server before Cleanup does.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process exited (exec.Cmd.Wait's error), once Done is
// closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() error {
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("send SIGKILL to pid %d: %w", p.Pid(), err)
	}
	<-p.done
	return nil
}

// Stop sends SIGTERM and waits up to timeout for a clean exit, then kills
// the process. An exit other than a clean one is an error.
func (p *Process) Stop(timeout time.Duration) error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = p.Kill()
		return fmt.Errorf("send SIGTERM to pid %d: %w", p.Pid(), err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.Kill()
		return fmt.Errorf("pid %d did not exit within %s of SIGTERM; killed it", p.Pid(), timeout)
	}
	if p.err != nil {
		return fmt.Errorf("pid %d exited after SIGTERM: %w", p.Pid(), p.err)
	}
	return nil
}

// LogTail returns the last LogTailBytes of the file at path, or why it
// cannot.
func LogTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot stat %s: %v)", path, err)
	}
	off := max(fi.Size()-LogTailBytes, 0)
	buf := make([]byte, fi.Size()-off)
	n, err := f.ReadAt(buf, off)
	if err != nil && n == 0 {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return string(buf[:n])
}

// FreePort asks the kernel for a free loopback port. Another process can
// take it before the server binds it; callers retry in that case.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("release probe port %d: %w", port, err)
	}
	return port, nil
}

// IsExecutable reports whether path is an executable file.
func IsExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
