package fsm

import (
	"encoding/json"
	"fmt"
	"io"
)

// snapshotFile is the layout of a snapshot. Version is its format
// (SnapshotFormat); Protocol and Release say who wrote it, so that a
// release that cannot read it names both. A node of protocol 0 reads
// format 1 and ignores the fields it does not know.
type snapshotFile struct {
	Version  int    `json:"version"`
	Protocol int    `json:"protocol,omitempty"`
	Release  string `json:"release,omitempty"`
	State    State  `json:"state"`
}

// WriteSnapshot writes the whole state to w.
func (s State) WriteSnapshot(w io.Writer) error { return s.writeSnapshot(w, "") }

// writeSnapshot writes the whole state to w, naming release as its writer.
func (s State) writeSnapshot(w io.Writer, release string) error {
	f := snapshotFile{Version: SnapshotFormat, Protocol: Protocol, Release: release, State: s}
	if err := json.NewEncoder(w).Encode(f); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot reads a state written by WriteSnapshot. A snapshot of a
// newer format than SnapshotFormat is refused with ErrNewerState, naming
// the release and protocol that wrote it and the format this one reads.
func ReadSnapshot(r io.Reader) (State, error) {
	var f snapshotFile
	if err := json.NewDecoder(r).Decode(&f); err != nil {
		return State{}, fmt.Errorf("read snapshot: %w", err)
	}
	if err := f.check(); err != nil {
		return State{}, err
	}
	// The checksum is derived: computed afresh, whatever was written.
	f.State.GapsSum = GapSum(f.State.Gaps)
	return f.State, nil
}

// CheckSnapshot reads the header of a snapshot and returns ErrNewerState
// if its format is newer than this release reads (see ReadSnapshot), or
// another error if it is no snapshot. A node checks its snapshots with it
// before Raft restores one: Raft falls back to an older snapshot when the
// newest fails, and a node must refuse to start instead.
func CheckSnapshot(r io.Reader) error {
	var f struct {
		Version  int    `json:"version"`
		Protocol int    `json:"protocol"`
		Release  string `json:"release"`
	}
	// The header comes first (snapshotFile's field order): stop there
	// rather than decode the state.
	dec := json.NewDecoder(r)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("read snapshot: not a JSON object (%v)", err)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		key, _ := t.(string)
		if key == "state" {
			break
		}
		var dst any
		switch key {
		case "version":
			dst = &f.Version
		case "protocol":
			dst = &f.Protocol
		case "release":
			dst = &f.Release
		default:
			dst = new(json.RawMessage)
		}
		if err := dec.Decode(dst); err != nil {
			return fmt.Errorf("read snapshot: %s: %w", key, err)
		}
	}
	return snapshotFile{Version: f.Version, Protocol: f.Protocol, Release: f.Release}.check()
}

// check refuses a format this release does not read.
func (f snapshotFile) check() error {
	switch {
	case f.Version > SnapshotFormat:
		by := fmt.Sprintf("protocol %d", f.Protocol)
		if f.Release != "" {
			by = fmt.Sprintf("geocursor %s, protocol %d", f.Release, f.Protocol)
		}
		return fmt.Errorf("%w: the snapshot is format version %d (written by %s); this release reads format version %d at most (protocol %d): run the release that wrote it, or a later one",
			ErrNewerState, f.Version, by, SnapshotFormat, Protocol)
	case f.Version < 1:
		return fmt.Errorf("read snapshot: format version %d is not a snapshot's (this release reads versions 1 to %d)", f.Version, SnapshotFormat)
	}
	return nil
}
