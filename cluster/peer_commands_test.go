package cluster

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/tlsutil"
)

// TestPeersSendOnlyWhatPeersSend checks who may have the leader apply
// each command through /v1/internal/apply: a peer certificate carries the
// lease commands in its own name and nothing else; the operator's
// commands need the operator's token, whoever forwards them.
func TestPeersSendOnlyWhatPeersSend(t *testing.T) {
	const op, rd = "operator-token-0123456789", "read-token-0123456789abcd"
	secure := &Node{cfg: Config{NodeID: "n1", TLS: &tlsutil.Node{}, ACL: NewACL(op, rd)}, fsm: fsm.New()}
	// w is a member that advertised that it does not process.
	for i, cmd := range []fsm.Command{
		{Op: fsm.OpSetMember, Member: &fsm.Member{ID: "w", RaftAddr: "127.0.0.1:9"}},
		{Op: fsm.OpSetWitness, Node: "w", Witness: true},
	} {
		b, err := cmd.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if res := secure.fsm.Apply(&raft.Log{Index: uint64(i + 1), Data: b}).(fsm.Result); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	peer := func(id, token string) caller {
		c := caller{peer: id, token: token}
		c.right = secure.cfg.ACL.rightOf(token)
		return c
	}
	adv := &fsm.Advance{LastEventID: 10}
	cmds := map[fsm.Op]fsm.Command{
		fsm.OpAcquire:      {Op: fsm.OpAcquire, Node: "n2", TTL: time.Second},
		fsm.OpRenew:        {Op: fsm.OpRenew, Node: "n2", Token: 3, TTL: time.Second},
		fsm.OpRelease:      {Op: fsm.OpRelease, Node: "n2", Token: 3},
		fsm.OpAdvance:      {Op: fsm.OpAdvance, Node: "n2", Token: 3, Advance: adv},
		fsm.OpReserve:      {Op: fsm.OpReserve, Node: "n2", TTL: time.Second},
		fsm.OpSetCursor:    {Op: fsm.OpSetCursor, Node: "n2", Token: 3, SetCursor: &fsm.SetCursor{LastEventID: 500000}},
		fsm.OpRestore:      {Op: fsm.OpRestore, Node: "n2", Restore: &fsm.Restore{Token: 9}},
		fsm.OpSetPaused:    {Op: fsm.OpSetPaused, Paused: true},
		fsm.OpRevoke:       {Op: fsm.OpRevoke, Token: 3},
		fsm.OpSetMember:    {Op: fsm.OpSetMember, Member: &fsm.Member{ID: "n9", RaftAddr: "127.0.0.1:9"}},
		fsm.OpRemoveMember: {Op: fsm.OpRemoveMember, Node: "n3"},
		fsm.OpSetWitness:   {Op: fsm.OpSetWitness, Node: "n3", Witness: true},
	}
	lease := map[fsm.Op]bool{fsm.OpAcquire: true, fsm.OpRenew: true, fsm.OpRelease: true, fsm.OpAdvance: true}
	operators := map[fsm.Op]bool{fsm.OpReserve: true, fsm.OpSetCursor: true, fsm.OpRestore: true, fsm.OpSetPaused: true}
	callers := []struct {
		name string
		c    caller
		may  func(fsm.Op) bool
		// as is the node the commands name (n2 unless set).
		as string
	}{
		{"a witness in its own name", peer("w", ""), func(o fsm.Op) bool { return lease[o] && o != fsm.OpAcquire }, "w"},
		{"a witness in its own name, the read token", peer("w", rd), func(o fsm.Op) bool { return lease[o] && o != fsm.OpAcquire }, "w"},
		{"the operator's token for a witness", peer("n2", op), func(o fsm.Op) bool { return lease[o] || operators[o] }, "w"},
		{"the peer in its own name, no token", peer("n2", ""), func(o fsm.Op) bool { return lease[o] }, ""},
		{"the peer in its own name, the read token", peer("n2", rd), func(o fsm.Op) bool { return lease[o] }, ""},
		{"the peer in its own name, a wrong token", peer("n2", "nope-nope-nope-nope"), func(o fsm.Op) bool { return lease[o] }, ""},
		{"another peer, no token", peer("n3", ""), func(fsm.Op) bool { return false }, ""},
		{"another peer with the operator's token", peer("n3", op), func(o fsm.Op) bool { return lease[o] || operators[o] }, ""},
		{"the peer in its own name with the operator's token", peer("n2", op), func(o fsm.Op) bool { return lease[o] || operators[o] }, ""},
	}
	for _, cl := range callers {
		for o, cmd := range cmds {
			if cl.as != "" && cmd.Node == "n2" {
				cmd.Node = cl.as
			}
			err := secure.authorizeCommand(cl.c, cmd)
			switch want := cl.may(o); {
			case want && err != nil:
				t.Errorf("%s: %s refused: %v", cl.name, o, err)
			case !want && !errors.Is(err, api.ErrPermissionDenied):
				t.Errorf("%s: %s: %v, want permission denied", cl.name, o, err)
			}
		}
	}

	// Without TLS the peers prove themselves with the operator token.
	plain := &Node{cfg: Config{NodeID: "n1", ACL: NewACL(op, rd)}}
	for o, cmd := range cmds {
		err := plain.authorizeCommand(caller{token: op, right: rightOperator}, cmd)
		if want := lease[o] || operators[o]; want != (err == nil) {
			t.Errorf("without TLS, with the operator token: %s: %v", o, err)
		}
	}
}

// TestLeaderRefusesInsaneValuesBeforeTheLogAndKeepsWitnesses drives a real
// one-node group: what the leader refuses never reaches the log, and a
// witness becomes a processing member only with the operator's consent.
func TestLeaderRefusesInsaneValuesBeforeTheLogAndKeepsWitnesses(t *testing.T) {
	n := startHTTPTestNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	self := n.self()
	id := n.ID()

	refusedBeforeTheLog := func(what string, cmd fsm.Command, want error) {
		t.Helper()
		before := n.raft.LastIndex()
		res, err := n.Apply(ctx, cmd)
		if !errors.Is(err, want) {
			t.Errorf("%s: %+v, %v; want %v", what, res, err, want)
		}
		if after := n.raft.LastIndex(); after != before {
			t.Errorf("%s reached the log: last index %d, was %d", what, after, before)
		}
	}

	refusedBeforeTheLog("a reservation for a day", fsm.Command{Op: fsm.OpReserve, Node: id, TTL: 24 * time.Hour}, fsm.ErrBadCommand)
	refusedBeforeTheLog("a reservation past the bound", fsm.Command{Op: fsm.OpReserve, Node: id, TTL: fsm.MaxReserveTTL + time.Second}, fsm.ErrBadCommand)
	restore := func(token uint64, clock int64) fsm.Command {
		return fsm.Command{Op: fsm.OpRestore, Node: id, Restore: &fsm.Restore{Cursor: fsm.Cursor{LastEventID: 10}, Token: token, Clock: clock}}
	}
	refusedBeforeTheLog("a restore with token 2^64-1", restore(math.MaxUint64, 0), fsm.ErrBadCommand)
	refusedBeforeTheLog("a restore with token 2^63", restore(1<<63, 0), fsm.ErrBadCommand)
	refusedBeforeTheLog("a restore with token 2^63-1", restore(math.MaxInt64, 0), fsm.ErrBadCommand)
	refusedBeforeTheLog("a restore with clock MaxInt64", restore(7, math.MaxInt64), fsm.ErrBadCommand)
	refusedBeforeTheLog("a restore with a clock an hour ahead", restore(7, time.Now().Add(time.Hour).UnixNano()), fsm.ErrBadCommand)
	if st := n.State(); st.Lease.Token != 0 || st.Cursor.LastEventID != 0 || st.Reservation != nil {
		t.Fatalf("refused commands changed the state: %+v", st)
	}
	res, err := n.Apply(ctx, fsm.Command{Op: fsm.OpReserve, Node: id, TTL: 10 * time.Second})
	if err != nil || res.Err != nil {
		t.Fatalf("a reservation as an agent makes it: %+v, %v", res, err)
	}

	// This node says it is a witness.
	witness := self
	witness.Witness = true
	if _, err := n.addMember(joinRequestFor(witness), false); err != nil {
		t.Fatalf("advertise a witness: %v", err)
	}
	if m, _ := n.fsm.Member(id); !m.Witness || m.RaftAddr != self.RaftAddr {
		t.Fatalf("members row after the witness's join: %+v", m)
	}
	// Peers (with TLS) may not acquire for a witness; the operator may,
	// to drive the lease by hand.
	r := serveHTTP(t, n.routes(), http.MethodPost, api.PathLease+"acquire", fuzzOperatorToken, []byte(`{"node":"`+id+`","ttl":"1s"}`))
	if r.code != http.StatusOK || strings.Contains(string(r.body), `"error"`) {
		t.Errorf("the operator's acquire for a witness: %d %s", r.code, r.body)
	}

	// A witness says it processes only with the operator's consent.
	if _, err := n.addMember(joinRequestFor(self), false); !errors.Is(err, api.ErrPermissionDenied) {
		t.Errorf("a witness's join as processing without the operator's token: %v, want permission denied", err)
	}
	if m, _ := n.fsm.Member(id); !m.Witness {
		t.Errorf("a refused join cleared the witness flag: %+v", m)
	}
	if _, err := n.addMember(joinRequestFor(self), true); err != nil {
		t.Fatalf("a witness's join as processing with the operator's token: %v", err)
	}
	if m, _ := n.fsm.Member(id); m != self {
		t.Fatalf("members row after the processing join: %+v, want %+v", m, self)
	}
}

// TestPauseAndResumeRefuseUnknownFields: no body or an empty object is a
// pause; anything else that is not one empty object is a 400.
func TestPauseAndResumeRefuseUnknownFields(t *testing.T) {
	n := startHTTPTestNode(t)
	h := n.routes()
	cases := []struct {
		body string
		code int
	}{
		{``, http.StatusOK},
		{" \n", http.StatusOK},
		{`{}`, http.StatusOK},
		{`{"paused":false}`, http.StatusBadRequest},
		{`{"ignored":true}`, http.StatusBadRequest},
		{`[]`, http.StatusBadRequest},
		{`{}{}`, http.StatusBadRequest},
		{`{`, http.StatusBadRequest},
		{`{}` + strings.Repeat(" ", maxSmallBody), http.StatusRequestEntityTooLarge},
	}
	for _, path := range []string{api.PathPause, api.PathResume} {
		for _, tc := range cases {
			paused := n.State().Cursor.Paused
			r := serveHTTP(t, h, http.MethodPost, path, fuzzOperatorToken, []byte(tc.body))
			if r.code != tc.code {
				t.Errorf("%s with %.20q: %d %s, want %d", path, tc.body, r.code, r.body, tc.code)
			}
			if tc.code != http.StatusOK && n.State().Cursor.Paused != paused {
				t.Errorf("%s with %.20q changed paused", path, tc.body)
			}
			if tc.code == http.StatusOK && n.State().Cursor.Paused != (path == api.PathPause) {
				t.Errorf("%s with %.20q: paused is %t", path, tc.body, n.State().Cursor.Paused)
			}
		}
	}
}
