package devcluster

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

var (
	portsMu sync.Mutex
	// portsGiven keeps this process from handing out one port twice, e.g.
	// when a port is freed and the kernel offers it again at once.
	portsGiven = map[int]bool{}
)

// FreeAddr returns a loopback address whose port was free a moment ago:
// the kernel picks it for a listener on 127.0.0.1:0 that is closed at once.
// No port is returned twice in one process.
func FreeAddr() (string, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("find a free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return fmt.Sprintf("127.0.0.1:%d", port), nil
		}
	}
	return "", errors.New("find a free port: the kernel keeps offering ports already handed out")
}

// AddrFree reports whether nothing listens on addr now and this process
// has not handed it out, and if so reserves it like FreeAddr does: for a
// fixed, well-known address that is used when it is free.
func AddrFree(addr string) bool {
	portsMu.Lock()
	defer portsMu.Unlock()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if portsGiven[port] {
		return false
	}
	portsGiven[port] = true
	return true
}
