package fsm

import (
	"testing"
	"time"
)

func TestWatchLeaseSeesEveryGrantAndRevoke(t *testing.T) {
	f := New()
	ls, changed := f.WatchLease()
	if ls.Lease.Holder != "" || ls.Lease.Token != 0 {
		t.Fatalf("fresh lease %+v, want none", ls)
	}
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixNano()
	applyLog(t, f, 1, Command{Op: OpAcquire, Node: "a", TTL: time.Second, Now: now})
	select {
	case <-changed:
	default:
		t.Fatal("the channel was not closed by the grant")
	}
	ls, changed = f.WatchLease()
	if ls.Lease.Holder != "a" || ls.Lease.Token != 1 || ls.LastHolder != "a" || ls.Clock != now {
		t.Fatalf("after the grant: %+v", ls)
	}
	applyLog(t, f, 2, Command{Op: OpRevoke, Token: 1, Reason: "gone", Now: now + 1})
	<-changed
	ls, _ = f.WatchLease()
	if ls.Lease.Holder != "" || ls.RevokedFrom != "a" || ls.LastHolder != "a" || ls.Lease.Token != 1 {
		t.Fatalf("after the revoke: %+v", ls)
	}
}
