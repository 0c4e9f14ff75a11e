package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestSetRemovedRecordsAndLetsBackIn(t *testing.T) {
	var s State
	s.Members = map[string]Member{"node3": {ID: "node3", RaftAddr: "10.0.0.3:8471"}}
	steps := []struct {
		node    string
		removed bool
		want    []string
	}{
		{"node3", true, []string{"node3"}},
		{"node1", true, []string{"node1", "node3"}},
		{"node3", true, []string{"node1", "node3"}}, // twice is once
		{"node3", false, []string{"node1"}},
		{"node9", false, []string{"node1"}}, // letting in an ID never removed changes nothing
		{"node1", false, nil},
	}
	for i, st := range steps {
		res := s.Apply(Command{Op: OpSetRemoved, Node: st.node, Removed: st.removed, Now: int64(i + 1)})
		if res.Err != nil {
			t.Fatalf("step %d: set_removed %s=%v refused: %v", i, st.node, st.removed, res.Err)
		}
		if !slices.Equal(s.Removed, st.want) {
			t.Fatalf("step %d: removed = %v, want %v", i, s.Removed, st.want)
		}
		for _, id := range st.want {
			if !s.IsRemoved(id) {
				t.Fatalf("step %d: IsRemoved(%s) = false", i, id)
			}
		}
	}
	if _, ok := s.Members["node3"]; !ok {
		t.Fatal("set_removed touched the members table")
	}
}

func TestSetRemovedRefusedBeyondMaxRemoved(t *testing.T) {
	var s State
	for i := range MaxRemoved {
		if res := s.Apply(Command{Op: OpSetRemoved, Node: fmt.Sprintf("n%04d", i), Removed: true}); res.Err != nil {
			t.Fatalf("removal %d refused: %v", i, res.Err)
		}
	}
	res := s.Apply(Command{Op: OpSetRemoved, Node: "one-more", Removed: true})
	if !errors.Is(res.Err, ErrBadCommand) {
		t.Fatalf("removal beyond MaxRemoved: err = %v, want ErrBadCommand", res.Err)
	}
	if s.IsRemoved("one-more") || len(s.Removed) != MaxRemoved {
		t.Fatalf("a refused set_removed changed the set (%d IDs)", len(s.Removed))
	}
	// An ID already removed, or letting one back in, is still granted.
	for _, c := range []Command{{Op: OpSetRemoved, Node: "n0000", Removed: true}, {Op: OpSetRemoved, Node: "n0000"}} {
		if res := s.Apply(c); res.Err != nil {
			t.Fatalf("%+v refused at the cap: %v", c, res.Err)
		}
	}
}

func TestSetRemovedValidatesNode(t *testing.T) {
	for _, c := range []Command{{Op: OpSetRemoved}, {Op: OpSetRemoved, Node: "bad id!", Removed: true}} {
		if err := c.Validate(); !errors.Is(err, ErrBadCommand) {
			t.Errorf("Validate(%+v) = %v, want ErrBadCommand", c, err)
		}
	}
}

func TestRemovedSurvivesSnapshotAndClone(t *testing.T) {
	s := State{Removed: []string{"a", "b"}}
	c := s.Clone()
	c.Removed[0] = "z"
	if s.Removed[0] != "a" {
		t.Fatal("Clone shares the removed set")
	}
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	got, err := ReadSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Removed, s.Removed) {
		t.Fatalf("snapshot removed = %v, want %v", got.Removed, s.Removed)
	}
}

func TestSetRemovedRoundTripsTheLog(t *testing.T) {
	b, err := Command{Op: OpSetRemoved, Node: "node3", Removed: true}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	c, err := DecodeCommand(b)
	if err != nil || c.Op != OpSetRemoved || !c.Removed || c.Node != "node3" {
		t.Fatalf("decode %s = %+v, %v", b, c, err)
	}
}
