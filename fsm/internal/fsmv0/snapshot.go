package fsmv0

import (
	"encoding/json"
	"fmt"
	"io"
)

// snapshotVersion guards Restore against a snapshot written by a future
// release whose layout this one does not know.
const snapshotVersion = 1

type snapshotFile struct {
	Version int   `json:"version"`
	State   State `json:"state"`
}

// WriteSnapshot writes the whole state to w.
func (s State) WriteSnapshot(w io.Writer) error {
	if err := json.NewEncoder(w).Encode(snapshotFile{Version: snapshotVersion, State: s}); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot reads a state written by WriteSnapshot.
func ReadSnapshot(r io.Reader) (State, error) {
	var f snapshotFile
	if err := json.NewDecoder(r).Decode(&f); err != nil {
		return State{}, fmt.Errorf("read snapshot: %w", err)
	}
	if f.Version != snapshotVersion {
		return State{}, fmt.Errorf("read snapshot: version %d is not supported (this build reads version %d)", f.Version, snapshotVersion)
	}
	// The checksum is derived: computed afresh, whatever was written.
	f.State.GapsSum = GapSum(f.State.Gaps)
	return f.State, nil
}
