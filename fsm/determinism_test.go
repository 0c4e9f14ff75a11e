package fsm

import (
	"errors"
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
	const n = 10000
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
			_ = len(st.Members)
			select {
			case <-changed:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })

	accepted := map[Op]int{}
	refused := map[error]int{}
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
			refused[refusal(ra.Err)]++
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
	for _, op := range []Op{OpAcquire, OpRenew, OpRelease, OpAdvance, OpRevoke, OpSetMember, OpRemoveMember, OpSetPaused, OpSetCursor, OpReserve} {
		if accepted[op] < 5 {
			t.Errorf("only %d accepted %s commands in the log", accepted[op], op)
		}
	}
	for _, sentinel := range Refusals {
		if refused[sentinel] < 5 {
			t.Errorf("only %d refusals with %q in the log", refused[sentinel], sentinel)
		}
	}
	if sa.Lease.Token < 50 || sa.Cursor.LastEventID < 50 {
		t.Errorf("the log made little progress: %+v", sa)
	}
	t.Logf("final token %d, cursor %d, accepted %v, refused %v", sa.Lease.Token, sa.Cursor.LastEventID, accepted, refused)
}

// refusal returns the sentinel of Refusals that err wraps, or nil.
func refusal(err error) error {
	for _, r := range Refusals {
		if errors.Is(err, r) {
			return r
		}
	}
	return nil
}
