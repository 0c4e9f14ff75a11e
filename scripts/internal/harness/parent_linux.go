package harness

import (
	"os"
	"syscall"
)

// signalOnParentDeath asks the kernel to send sig to this process when its
// parent dies.
func signalOnParentDeath(sig syscall.Signal) error {
	ppid := os.Getppid()
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(sig), 0); errno != 0 {
		return os.NewSyscallError("prctl(PR_SET_PDEATHSIG)", errno)
	}
	if os.Getppid() != ppid {
		// The parent died before the request took effect.
		return syscall.Kill(os.Getpid(), sig)
	}
	return nil
}
