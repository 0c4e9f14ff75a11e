//go:build !linux

package devcluster

import "syscall"

// supervisedAttr puts the child in its own process group, away from the
// terminal's signals. Only Linux can also tie its life to this process's.
func supervisedAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
