package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/geocursor/geocursor/fsm"
)

// version is the release, set when a release is built:
//
//	go build -ldflags "-X main.version=v1.2.0" ./cmd/geocursor
//
// Without it a build says "dev".
var version = "dev"

// commit may be set the same way (-X main.commit=...); otherwise it comes
// from the VCS stamp that `go build` in a git checkout embeds.
var commit = ""

// build says what this binary was built from.
type build struct {
	Version, Commit, GoVersion string
}

// String is what `geocursor version` prints: the release, the protocol
// it speaks (design section 14) and the snapshot format it writes, and
// what it was built from.
func (b build) String() string {
	return fmt.Sprintf("geocursor %s (protocol %d, snapshot format %d; commit %s, %s)",
		b.Version, fsm.Protocol, fsm.SnapshotFormat, b.Commit, b.GoVersion)
}

// buildInfo reads the release from version, and the commit from commit or
// the binary's VCS stamp ("unknown" when built outside a checkout, as by
// go run; "-dirty" when the checkout had changes).
func buildInfo() build {
	b := build{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if b.Commit != "" {
		return b
	}
	b.Commit = "unknown"
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	var rev string
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" {
		b.Commit = rev
		if len(b.Commit) > 12 {
			b.Commit = b.Commit[:12]
		}
		if dirty {
			b.Commit += "-dirty"
		}
	}
	return b
}
