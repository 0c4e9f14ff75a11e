package fsm

import (
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// TestReplicasApplyingSameLogAgree applies one generated log of a few
// thousand commands (and a few entries that do not decode) to two fresh FSMs
// through raft.FSM.Apply: they must return the same results and end in the
// same state, which must also be what the pure State.Apply computes.
func TestReplicasApplyingSameLogAgree(t *testing.T) {
	const n = 5000
	r := rand.New(rand.NewSource(20261125))
	ch := randChooser{r}
	garbage := [][]byte{
		nil,
		[]byte("{"),
		[]byte(`{"op":"acquire","node":"n1","ttl":1,"bogus":true}`),
		[]byte(`{"op":"explode"}`),
	}

	var model State
	now := t0
	var log [][]byte
	var want []Result
	for i := 0; i < n; i++ {
		if r.Intn(100) == 0 {
			data := garbage[r.Intn(len(garbage))]
			log = append(log, data)
			_, err := DecodeCommand(data)
			want = append(want, Result{Lease: model.Lease, Cursor: model.Cursor, Err: err})
			continue
		}
		c := genCommand(ch, model, &now)
		data, err := c.Encode()
		if err != nil {
			t.Fatalf("encode %+v: %v", c, err)
		}
		if c.Validate() == nil {
			back, err := DecodeCommand(data)
			if err != nil || !reflect.DeepEqual(back, c) {
				t.Fatalf("command %+v does not survive Encode/DecodeCommand: %+v, %v", c, back, err)
			}
		}
		log = append(log, data)
		want = append(want, model.Apply(c))
	}

	a, b := New(), New()
	// A local reader (such as the idle cursor loop) reads while entries are
	// applied; under -race this checks the FSM's locking.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, changed := a.Watch()
			_ = st.SortedMembers()
			select {
			case <-changed:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })

	accepted := map[Op]int{}
	refused := map[string]int{}
	for i, data := range log {
		l := &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data}
		ra, ok := a.Apply(l).(Result)
		if !ok {
			t.Fatalf("entry %d: Apply returned %T", i, ra)
		}
		rb := b.Apply(l).(Result)
		if !reflect.DeepEqual(ra, rb) {
			t.Fatalf("entry %d (%s): replicas disagree:\n a %+v\n b %+v", i, data, ra, rb)
		}
		if ra.Index != l.Index {
			t.Fatalf("entry %d: result has index %d, want the log index %d", i, ra.Index, l.Index)
		}
		ra.Index = 0 // State.Apply runs outside Raft
		if !reflect.DeepEqual(ra, want[i]) {
			t.Fatalf("entry %d (%s): FSM and State.Apply disagree:\n fsm   %+v\n state %+v", i, data, ra, want[i])
		}
		if ra.Err != nil {
			refused[Code(ra.Err)]++
		} else if c, err := DecodeCommand(data); err == nil {
			accepted[c.Op]++
		}
	}
	sa, sb := a.State(), b.State()
	if !reflect.DeepEqual(sa, sb) {
		t.Fatalf("final states differ:\n a %+v\n b %+v", sa, sb)
	}
	if !reflect.DeepEqual(sa, model) {
		t.Fatalf("FSM state differs from State.Apply:\n fsm   %+v\n state %+v", sa, model)
	}

	// The log must have exercised every rule, or agreement proves little.
	for _, op := range []Op{OpAcquire, OpRenew, OpRelease, OpAdvance, OpRevoke, OpSetMember, OpRemoveMember, OpSetPaused} {
		if accepted[op] < 5 {
			t.Errorf("only %d accepted %s commands in the log", accepted[op], op)
		}
	}
	for _, code := range []string{"lease_held", "stale_token", "lease_expired", "cursor_backwards", "paused", "bad_command"} {
		if refused[code] < 5 {
			t.Errorf("only %d refusals with %s in the log", refused[code], code)
		}
	}
	if sa.Lease.Token < 50 || sa.Cursor.LastEventID < 50 {
		t.Errorf("the log made little progress: %+v", sa)
	}
	t.Logf("final token %d, cursor %d, accepted %v, refused %v", sa.Lease.Token, sa.Cursor.LastEventID, accepted, refused)
}

// sentinels lists every sentinel error with its wire code. The codes cross
// the HTTP API between nodes of different versions: never change one.
var sentinels = []struct {
	err  error
	code string
}{
	{ErrLeaseHeld, "lease_held"},
	{ErrStaleToken, "stale_token"},
	{ErrLeaseExpired, "lease_expired"},
	{ErrCursorBackwards, "cursor_backwards"},
	{ErrPaused, "paused"},
	{ErrBadCommand, "bad_command"},
}

func TestErrorCodeRoundTripKeepsSentinel(t *testing.T) {
	if len(sentinels) != len(codes) {
		t.Fatalf("the test knows %d sentinels, errors.go maps %d", len(sentinels), len(codes))
	}
	for _, s := range sentinels {
		t.Run(s.code, func(t *testing.T) {
			for _, err := range []error{
				s.err,
				refuse(s.err, "while testing"),
				fmt.Errorf("apply advance (token 3): %w", refuse(s.err, "detail")),
			} {
				code := Code(err)
				if code != s.code {
					t.Errorf("Code(%v) = %q, want %q", err, code, s.code)
				}
				back := ErrorFromCode(code, err.Error())
				if !errors.Is(back, s.err) {
					t.Errorf("ErrorFromCode(%q, %q) = %v, does not match %v", code, err.Error(), back, s.err)
				}
				if back.Error() != err.Error() {
					t.Errorf("message %q became %q", err.Error(), back.Error())
				}
				if Code(back) != code {
					t.Errorf("Code after the round trip = %q, want %q", Code(back), code)
				}
				for _, other := range sentinels {
					if other.err != s.err && errors.Is(back, other.err) {
						t.Errorf("%v also matches %v", back, other.err)
					}
				}
			}
		})
	}
}

func TestErrorFromUnknownCodeMatchesNoSentinel(t *testing.T) {
	if got := Code(nil); got != "" {
		t.Errorf("Code(nil) = %q", got)
	}
	if got := Code(errors.New("disk on fire")); got != "" {
		t.Errorf("Code(plain error) = %q", got)
	}
	for _, code := range []string{"", "not_leader", "LEASE_HELD"} {
		err := ErrorFromCode(code, "disk on fire")
		if err == nil || err.Error() != "disk on fire" {
			t.Errorf("ErrorFromCode(%q) = %v", code, err)
		}
		for _, s := range sentinels {
			if errors.Is(err, s.err) {
				t.Errorf("ErrorFromCode(%q) matches %v", code, s.err)
			}
		}
	}
}
