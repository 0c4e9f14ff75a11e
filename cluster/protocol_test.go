package cluster

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGateHoldsProtocol1CommandsUntilEveryVoterSpeaksIt drives a real
// one-node group whose one voter's row first advertises nothing (a node
// of protocol 0): set_witness and set_removed stay out of the log, the
// leader still answers joins by the removal it holds, and once the voter
// advertises protocol 1 both go out.
func TestGateHoldsProtocol1CommandsUntilEveryVoterSpeaksIt(t *testing.T) {
	n := startHTTPTestNode(t)
	id := n.ID()
	waitFor(t, "the leader's own advertisement", func() bool {
		m, _ := n.fsm.Member(id)
		return n.IsLeader() && m.Protocol == fsm.Protocol
	})
	if !n.groupSpeaks(1) {
		t.Fatal("a group of one node of this release does not speak protocol 1")
	}
	if st := n.Status(t.Context()); st.Members[0].Protocol != fsm.Protocol {
		t.Errorf("status member: %+v, want protocol %d", st.Members[0], fsm.Protocol)
	}

	// The voter's row as a node of protocol 0 leaves it.
	if res, err := n.applyOwn(fsm.Command{Op: fsm.OpSetVersion, Node: id}); err != nil || res.Err != nil {
		t.Fatalf("clear the advertisement: %+v, %v", res, err)
	}
	if n.groupSpeaks(1) {
		t.Fatal("the gate is open with a voter of protocol 0")
	}
	before := n.raft.LastIndex()
	if err := n.setRemoved("gone", true); err != nil {
		t.Fatalf("remove while the gate is closed: %v", err)
	}
	witness := n.self()
	witness.Witness, witness.Version, witness.Protocol = true, "", 0
	if _, err := n.addMember(joinRequestFor(witness), true); err != nil {
		t.Fatalf("a witness's join while the gate is closed: %v", err)
	}
	if after := n.raft.LastIndex(); after != before {
		t.Errorf("a gated command reached the log while the gate is closed: last index %d, was %d", after, before)
	}
	if st := n.State(); st.IsRemoved("gone") || st.Members[id].Witness {
		t.Fatalf("the state took a gated command: removed %v, row %+v", st.Removed, st.Members[id])
	}
	// The leader answers joins by what it holds.
	_, err := n.addMember(api.JoinRequest{NodeID: "gone", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"}, true)
	if !errors.Is(err, api.ErrPermissionDenied) {
		t.Errorf("the join of a removal held back: %v, want permission denied", err)
	}

	// The voter advertises protocol 1: what was held goes out.
	if res, err := n.applyOwn(fsm.Command{Op: fsm.OpSetVersion, Node: id, Version: "test", Protocol: fsm.Protocol}); err != nil || res.Err != nil {
		t.Fatalf("advertise: %+v, %v", res, err)
	}
	waitFor(t, "the held commands in the state", func() bool {
		st := n.State()
		return st.IsRemoved("gone") && st.Members[id].Witness
	})
	if !n.gate.empty() {
		t.Errorf("commands still held after they went out: %+v", n.gate.held())
	}

	// With the gate open, they go out at once.
	if err := n.setRemoved("gone", false); err != nil {
		t.Fatal(err)
	}
	if n.State().IsRemoved("gone") {
		t.Error("letting an ID back in with the gate open was not applied at once")
	}
}

// TestNodeRefusesToStartOnASnapshotOfANewerFormat: Raft would skip a
// snapshot it cannot restore and start from an older one; the node
// refuses instead, naming the snapshot's versions and its own.
func TestNodeRefusesToStartOnASnapshotOfANewerFormat(t *testing.T) {
	dir := t.TempDir()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	write := func(index uint64, body string) {
		t.Helper()
		sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(sink, body); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	if err := (fsm.State{}).WriteSnapshot(&b); err != nil {
		t.Fatal(err)
	}
	write(10, b.String())
	if err := checkSnapshots(snaps, "1.4.0"); err != nil {
		t.Fatalf("a snapshot of this release: %v", err)
	}
	write(20, `{"version":2,"protocol":2,"release":"2.0.0","state":{}}`)
	err = checkSnapshots(snaps, "1.4.0")
	if !errors.Is(err, fsm.ErrNewerState) {
		t.Fatalf("a snapshot of a newer format: %v, want %v", err, fsm.ErrNewerState)
	}
	for _, want := range []string{"format version 2", "geocursor 2.0.0, protocol 2", "format version 1 at most (protocol 1)", "this is geocursor 1.4.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %q", err, want)
		}
	}
}
