package fsm

import (
	"testing"
	"time"
)

// BenchmarkAdvanceWithManyOpenGaps is the state machine's share of an
// advance's Raft cost with MaxGaps open gaps: decoding the entry, the
// leader's check and the apply on each replica, and the copy a reader of
// the local state (Watch) takes. (The holder hashes its gap set once per
// advance besides: GapSum of 10,000 gaps.)
func BenchmarkAdvanceWithManyOpenGaps(b *testing.B) {
	s := State{Lease: Lease{Holder: "n1", Token: 1, ExpiresAt: t0 + int64(time.Hour)}}
	for id := int64(1); id <= MaxGaps; id++ {
		s.Gaps = append(s.Gaps, Gap{ID: 2 * id, FirstSeen: t0})
	}
	s.Cursor.LastEventID = 2*MaxGaps + 1
	s.GapsSum = GapSum(s.Gaps)
	f := New()
	f.state = s
	b.ResetTimer()
	for i := range b.N {
		st, _ := f.Watch()
		c := Command{Op: OpAdvance, Node: "n1", Token: 1, TTL: time.Minute, Now: t0 + int64(i),
			Advance: &Advance{LastEventID: st.Cursor.LastEventID + 1000, Events: 1000, Keep: true, Seq: st.Lease.Advances + 1,
				GapsDelta: true, GapsBase: st.GapsSum}}
		data, err := c.Encode()
		if err != nil {
			b.Fatal(err)
		}
		dc, err := DecodeCommand(data)
		if err != nil {
			b.Fatal(err)
		}
		if res := f.Check(dc); res.Err != nil {
			b.Fatal(res.Err)
		}
		f.mu.Lock()
		res := f.state.Apply(dc)
		f.mu.Unlock()
		if res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}
