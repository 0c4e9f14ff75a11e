package devcluster

import "syscall"

// supervisedAttr puts the child in its own process group, away from the
// terminal's signals, and has the kernel SIGKILL it when the thread that
// started it dies. The Go runtime does not end its threads unless a
// goroutine exits while locked to one, which this package never does.
func supervisedAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
