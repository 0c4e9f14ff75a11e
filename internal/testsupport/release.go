package testsupport

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// PreviousRelease is the commit of the release before this one: the
// upgrade test builds it (BuildRelease) and rolls a group of its agents
// over to this build, and back. It is the one place the commit is
// recorded. At each release, once the release is tagged, it moves to
// that release's commit (the tag's commit, abbreviated to at least 7
// hex digits), in the same change that opens the next release's work:
// from then on every change must still run in one group with it
// (design section 14). ab96392 is the release before the protocol
// version existed: its nodes speak protocol 0.
const PreviousRelease = "ab96392"

var (
	releaseMu   sync.Mutex
	releaseDir  string
	releaseBins = map[string]string{} // commit -> binary
)

// BuildRelease builds ./cmd/geocursor as it was at commit (e.g.
// PreviousRelease), once per commit and test process, from a temporary
// git worktree of the test's own checkout, and returns the binary's path.
// It fails the test if the checkout lacks the commit (a shallow clone:
// the message says how to fetch it) or the build fails. RemoveBinary
// removes what it built.
func BuildRelease(tb testing.TB, commit string) string {
	tb.Helper()
	releaseMu.Lock()
	defer releaseMu.Unlock()
	if bin, ok := releaseBins[commit]; ok {
		return bin
	}
	if releaseDir == "" {
		dir, err := os.MkdirTemp("", "geocursor-release-bin-")
		if err != nil {
			tb.Fatalf("create the release build dir: %v", err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			tb.Fatalf("chmod the release build dir: %v", err)
		}
		releaseDir = dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	bin, err := devcluster.BuildCommit(ctx, commit, releaseDir)
	if err != nil {
		tb.Fatalf("build geocursor of the release at %s: %v", commit, err)
	}
	tb.Logf("built geocursor at commit %s in %s", commit, time.Since(start).Round(100*time.Millisecond))
	releaseBins[commit] = bin
	return bin
}

// removeReleases removes what BuildRelease built, if anything.
func removeReleases() error {
	releaseMu.Lock()
	defer releaseMu.Unlock()
	if releaseDir == "" {
		return nil
	}
	if err := os.RemoveAll(releaseDir); err != nil {
		return fmt.Errorf("remove the release builds: %w", err)
	}
	releaseDir, releaseBins = "", map[string]string{}
	return nil
}
