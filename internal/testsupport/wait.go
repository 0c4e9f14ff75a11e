package testsupport

import (
	"context"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// WaitFor polls cond every 20ms until it returns true, and fails the test
// with what and cond's last detail if that takes longer than timeout.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	err := devcluster.WaitFor(context.Background(), timeout, what, func() (bool, string, error) {
		ok, detail := cond()
		return ok, detail, nil
	})
	if err != nil {
		tb.Fatalf("%v", err)
	}
}
