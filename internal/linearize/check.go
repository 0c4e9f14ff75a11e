package linearize

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/geocursor/geocursor/api"
)

// DefaultTimeout bounds one porcupine search. Checking is NP-hard in
// general; histories of the lease are nearly sequential and take well
// under a second per thousand commands, so hitting this means something
// pathological (thousands of unanswered commands).
const DefaultTimeout = 2 * time.Minute

// Info describes one check: its verdict, the size of the history, and what
// WriteVisualization needs.
type Info struct {
	// Result is porcupine's verdict: Ok, Illegal, or Unknown when the
	// search timed out.
	Result porcupine.CheckResult
	// Ops is the number of commands checked; Unknown of them had no answer.
	Ops, Unknown int
	// Elapsed is how long the search took.
	Elapsed time.Duration

	model       porcupine.Model
	ops         []porcupine.Operation
	lin         *porcupine.LinearizationInfo
	annotations []porcupine.Annotation
}

// Verdict is a one-word summary: linearizable, NOT-linearizable or
// inconclusive.
func (i *Info) Verdict() string {
	switch i.Result {
	case porcupine.Ok:
		return "linearizable"
	case porcupine.Illegal:
		return "NOT-linearizable"
	}
	return "inconclusive"
}

func (i *Info) String() string {
	return fmt.Sprintf("%s: %d commands (%d without an answer) checked in %s",
		i.Verdict(), i.Ops, i.Unknown, i.Elapsed.Round(time.Millisecond))
}

// Annotate adds a bar to the visualisation, e.g. a fault and how long it
// lasted. Times are Unix nanoseconds, like the history's.
func (i *Info) Annotate(tag string, start, end int64, description string) {
	i.annotations = append(i.annotations, porcupine.Annotation{
		Tag: tag, Start: start, End: end, Description: description,
		BackgroundColor: "#fbd5d5",
	})
}

// WriteVisualization writes porcupine's interactive HTML view of the
// history to path: each peer's commands on a timeline and, when the check
// failed, the longest linearizable prefix and where it breaks.
func (i *Info) WriteVisualization(path string) error {
	if i.lin == nil {
		_, lin := porcupine.CheckOperationsVerbose(i.model, i.ops, DefaultTimeout)
		i.lin = &lin
	}
	lin := *i.lin
	lin.AddAnnotations(i.annotations)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write visualization: %w", err)
	}
	if err := porcupine.VisualizePath(i.model, lin, path); err != nil {
		return fmt.Errorf("write visualization %s: %w", path, err)
	}
	return nil
}

// Check reports whether entries are linearizable with respect to
// fsm.State.Apply, starting from the state of a fresh cluster. Entries may
// come from several peers in any order.
func Check(entries []api.HistoryEntry) (bool, *Info) {
	return CheckTimeout(entries, DefaultTimeout)
}

// CheckTimeout is Check with a bound on the search; a search that runs out
// of time reports false with Info.Result Unknown.
func CheckTimeout(entries []api.HistoryEntry, timeout time.Duration) (bool, *Info) {
	info := &Info{model: newModel()}
	info.ops, info.Unknown = operations(entries)
	info.Ops = len(info.ops)
	start := time.Now()
	info.Result = porcupine.CheckOperationsTimeout(info.model, info.ops, timeout)
	if info.Result == porcupine.Illegal {
		// Only a failure needs the (costlier) partial linearizations.
		res, lin := porcupine.CheckOperationsVerbose(info.model, info.ops, timeout)
		info.Result, info.lin = res, &lin
	}
	info.Elapsed = time.Since(start)
	return info.Result == porcupine.Ok, info
}

// operations turns entries into porcupine operations. A command without an
// answer returns at the end of the history: it may take effect at any time
// after its call. Each peer gets as many rows (client IDs) as it had
// commands in flight at once.
func operations(entries []api.HistoryEntry) ([]porcupine.Operation, int) {
	sorted := make([]api.HistoryEntry, len(entries))
	copy(sorted, entries)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })

	end := int64(0)
	for _, e := range sorted {
		end = max(end, e.Call, e.Return)
	}
	end++

	type lane struct {
		node string
		free int64 // the row is free after this time
	}
	var lanes []lane
	unknown := 0
	ops := make([]porcupine.Operation, 0, len(sorted))
	for i, e := range sorted {
		in := input{idx: i, node: e.Node, cmd: e.Cmd, call: e.Call, index: e.Index}
		if e.Now != 0 {
			in.cmd.Now = e.Now
		}
		var out output
		ret := max(e.Return, e.Call)
		if e.Error != "" || e.Lease == nil || e.Cursor == nil {
			out.unknown = true
			ret = end
			unknown++
		} else {
			out.lease, out.cursor, out.code = *e.Lease, *e.Cursor, e.Code
		}
		client := -1
		for l := range lanes {
			if lanes[l].node == e.Node && lanes[l].free < e.Call {
				client = l
				break
			}
		}
		if client < 0 {
			lanes = append(lanes, lane{node: e.Node})
			client = len(lanes) - 1
		}
		lanes[client].free = ret
		ops = append(ops, porcupine.Operation{
			ClientId: client, Input: in, Call: e.Call, Output: out, Return: ret,
			Metadata: e.Node,
		})
	}
	return ops, unknown
}
