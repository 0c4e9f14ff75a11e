//go:build !linux

package harness

import "syscall"

// signalOnParentDeath does nothing outside Linux.
func signalOnParentDeath(sig syscall.Signal) error { return nil }
