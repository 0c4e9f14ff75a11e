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

// Poll calls cond every interval until it returns true or timeout passes,
// and returns cond's last answer. Unlike WaitFor it does not fail the
// test, so the caller can explain what went wrong in detail.
func Poll(timeout, interval time.Duration, cond func() (bool, string)) (bool, string) {
	var detail string
	err := devcluster.WaitEvery(context.Background(), timeout, interval, "", func() (bool, string, error) {
		var ok bool
		ok, detail = cond()
		return ok, detail, nil
	})
	return err == nil, detail
}
