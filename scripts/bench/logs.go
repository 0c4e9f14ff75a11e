package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// Messages of the cursor's log that carry timings: "Lease obtained" has the
// acquire's raft_ms; "batch committed" (debug) has the whole batch
// (duration_ms), reading the source (fetch_ms) and the tracking transaction
// (commit_ms); "progress recorded" (debug) has a release-and-advance's
// raft_ms. Through a backlog one advance records the batches of up to
// 100 ms.
const (
	msgLeaseObtained    = "Lease obtained. Fetching events."
	msgBatchCommitted   = "batch committed"
	msgProgressRecorded = "progress recorded"
)

// raftCost is what the Raft group costs per batch.
type raftCost struct {
	Acquire summary `json:"acquire"`
	Advance summary `json:"release_and_advance"`
}

// batchTimes splits a batch's time into its steps, to show where the
// time goes.
type batchTimes struct {
	Duration summary `json:"duration"`
	Fetch    summary `json:"fetch"`
	Commit   summary `json:"tracking_commit"`
	Raft     summary `json:"raft_advance"`
}

// logTimes are the samples read from cursor logs.
type logTimes struct {
	acquire, advance, duration, fetch, commit []float64
	acquisitions                              []acquisition
}

// acquisition is one "Lease obtained" line.
type acquisition struct {
	at    time.Time
	node  string
	token uint64
}

// holderChanges counts how often the lease went to another peer than the
// one that held it before, in time order.
func (t logTimes) holderChanges() int {
	acq := slices.Clone(t.acquisitions)
	slices.SortFunc(acq, func(a, b acquisition) int { return a.at.Compare(b.at) })
	changes := 0
	for i := 1; i < len(acq); i++ {
		if acq[i].node != acq[i-1].node {
			changes++
		}
	}
	return changes
}

// lastAcquisitionBefore returns the latest acquisition at or before t.
func (t logTimes) lastAcquisitionBefore(at time.Time) (acquisition, bool) {
	var last acquisition
	found := false
	for _, a := range t.acquisitions {
		if !a.at.After(at) && (!found || a.at.After(last.at)) {
			last, found = a, true
		}
	}
	return last, found
}

func (t logTimes) raftCost() raftCost {
	return raftCost{Acquire: summarize(t.acquire), Advance: summarize(t.advance)}
}

func (t logTimes) batchTimes() batchTimes {
	return batchTimes{Duration: summarize(t.duration), Fetch: summarize(t.fetch), Commit: summarize(t.commit), Raft: summarize(t.advance)}
}

// logMarks remembers how long each agent's log was, so that a phase's
// lines can be read afterwards.
type logMarks map[string]int64

func markLogs(agents []*devcluster.Agent) logMarks {
	m := logMarks{}
	for _, a := range agents {
		if fi, err := os.Stat(a.LogPath); err == nil {
			m[a.ID] = fi.Size()
		}
	}
	return m
}

// agentTimes reads the agents' log lines written between two marks.
func agentTimes(agents []*devcluster.Agent, from, to logMarks) (logTimes, error) {
	var t logTimes
	for _, a := range agents {
		if err := t.read(a.ID, a.LogPath, from[a.ID], to[a.ID]); err != nil {
			return t, fmt.Errorf("read the log of %s: %w", a.ID, err)
		}
	}
	return t, nil
}

// logFollower reads the agents' logs as they grow, keeping every lease
// acquisition seen so far.
type logFollower struct {
	offsets logMarks
	times   logTimes
}

// update reads what the agents logged since the last update.
func (f *logFollower) update(agents []*devcluster.Agent) error {
	if f.offsets == nil {
		f.offsets = logMarks{}
	}
	for _, a := range agents {
		n, err := f.times.readLines(a.ID, a.LogPath, f.offsets[a.ID], -1)
		if err != nil {
			return fmt.Errorf("read the log of %s: %w", a.ID, err)
		}
		f.offsets[a.ID] += n
	}
	return nil
}

// read adds the timings of node's log at path, bytes [start, end); end < 0
// means to the end of the file.
func (t *logTimes) read(node, path string, start, end int64) error {
	_, err := t.readLines(node, path, start, end)
	return err
}

// readLines is read that stops after the last whole line, and returns how
// many bytes it consumed.
func (t *logTimes) readLines(node, path string, start, end int64) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if end < 0 {
		fi, err := f.Stat()
		if err != nil {
			return 0, err
		}
		end = fi.Size()
	}
	if end <= start {
		return 0, nil
	}
	var consumed int64
	sc := bufio.NewScanner(io.NewSectionReader(f, start, end-start))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		// Whole lines only: a line being written is read next time.
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			return i + 1, data[:i], nil
		}
		return 0, nil, nil
	})
	for sc.Scan() {
		line := sc.Bytes()
		consumed += int64(len(line)) + 1
		if len(line) == 0 || line[0] != '{' {
			continue // the "=== ... geocursor agent" start lines
		}
		var e struct {
			Time     string   `json:"@timestamp"`
			Token    uint64   `json:"token"`
			Message  string   `json:"@message"`
			Raft     *float64 `json:"raft_ms"`
			Duration *float64 `json:"duration_ms"`
			Fetch    *float64 `json:"fetch_ms"`
			Commit   *float64 `json:"commit_ms"`
		}
		if json.Unmarshal(line, &e) != nil {
			continue
		}
		switch e.Message {
		case msgLeaseObtained:
			if e.Raft == nil {
				continue
			}
			t.acquire = append(t.acquire, *e.Raft)
			if at, err := time.Parse(time.RFC3339Nano, e.Time); err == nil {
				t.acquisitions = append(t.acquisitions, acquisition{at: at, node: node, token: e.Token})
			}
		case msgProgressRecorded:
			if e.Raft != nil {
				t.advance = append(t.advance, *e.Raft)
			}
		case msgBatchCommitted:
			if e.Duration != nil && e.Fetch != nil && e.Commit != nil {
				t.duration = append(t.duration, *e.Duration)
				t.fetch = append(t.fetch, *e.Fetch)
				t.commit = append(t.commit, *e.Commit)
			}
		}
	}
	return consumed, sc.Err()
}
