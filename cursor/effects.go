package cursor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Job kinds written to geo_jobs besides the names of other geo events, which
// are used as they are.
const (
	KindSync              = "sync"
	KindDelete            = "delete"
	KindCacheInvalidation = "cache_invalidation"
)

// job is one geo_jobs row to insert.
type job struct {
	EventID        int64
	Kind           string
	ReplicableName *string
	// EventName is the geo event's own name (created, updated, deleted,
	// ...), what Geo::EventWorker is called with; nil for a cache
	// invalidation.
	EventName     *string
	ModelRecordID *int64
	Payload       []byte // a JSON object
}

// deadLetter is one geo_dead_letters row to insert: an event that could not
// be turned into a job, with why and what it looked like.
type deadLetter struct {
	EventID int64
	Reason  string
	Row     []byte // JSON
}

// registryKey identifies a geo_registry row.
type registryKey struct {
	ReplicableName string
	ModelRecordID  int64
}

// registryOp is what the batch does to one registry row: upsert it as pending
// or delete it (and leave a tombstone), both as of EventID.
type registryOp struct {
	registryKey
	EventID int64
	Delete  bool
}

// effects is everything a batch writes to the tracking database, apart from
// the fence row.
type effects struct {
	Jobs        []job
	DeadLetters []deadLetter
	// Registry holds at most one op per key, that of the key's highest event
	// ID in the batch, sorted by key. One statement cannot touch a row twice
	// (ON CONFLICT), and only the last event decides the row anyway.
	Registry []registryOp
}

// classify turns a batch into its effects. It is pure: the rules of section 6
// of the design live here, and the SQL only carries them out. Every event
// ends in exactly one job or one dead letter.
func classify(events []Event) effects {
	var out effects
	latest := make(map[registryKey]registryOp)
	for _, ev := range events {
		j, op, reason := classifyOne(ev)
		if reason != "" {
			out.DeadLetters = append(out.DeadLetters, deadLetter{EventID: ev.ID, Reason: reason, Row: rowJSON(ev)})
			continue
		}
		out.Jobs = append(out.Jobs, j)
		if op != nil {
			if cur, ok := latest[op.registryKey]; !ok || op.EventID > cur.EventID {
				latest[op.registryKey] = *op
			}
		}
	}
	for _, op := range latest {
		out.Registry = append(out.Registry, op)
	}
	sort.Slice(out.Registry, func(i, j int) bool {
		a, b := out.Registry[i], out.Registry[j]
		if a.ReplicableName != b.ReplicableName {
			return a.ReplicableName < b.ReplicableName
		}
		return a.ModelRecordID < b.ModelRecordID
	})
	return out
}

// classifyOne returns the job and registry op for ev, or the reason it is a
// dead letter.
func classifyOne(ev Event) (job, *registryOp, string) {
	switch {
	case ev.GeoEventID == nil && ev.CacheInvalidationEventID == nil:
		return job{}, nil, "geo_event_log row has no geo_event_id or cache_invalidation_event_id"
	case ev.GeoEventID != nil && ev.CacheInvalidationEventID != nil:
		return job{}, nil, "geo_event_log row has both a geo_event_id and a cache_invalidation_event_id"
	case ev.CacheInvalidationEventID != nil:
		if ev.CacheInvalidation == nil {
			return job{}, nil, fmt.Sprintf("geo_cache_invalidation_events row %d does not exist", *ev.CacheInvalidationEventID)
		}
		payload, err := json.Marshal(map[string]string{"key": ev.CacheInvalidation.Key})
		if err != nil { // a map of strings always marshals
			return job{}, nil, fmt.Sprintf("encode cache invalidation payload: %v", err)
		}
		return job{EventID: ev.ID, Kind: KindCacheInvalidation, Payload: payload}, nil, ""
	}

	ge := ev.GeoEvent
	if ge == nil {
		return job{}, nil, fmt.Sprintf("geo_events row %d does not exist", *ev.GeoEventID)
	}
	if ge.EventName == "" {
		return job{}, nil, fmt.Sprintf("geo_events row %d has no event_name", ge.ID)
	}
	id, hasID, isObject := payloadModelRecordID(ge.Payload)
	if !isObject {
		return job{}, nil, fmt.Sprintf("geo_events row %d: payload is not a JSON object", ge.ID)
	}
	name, eventName := ge.ReplicableName, ge.EventName
	j := job{EventID: ev.ID, ReplicableName: &name, EventName: &eventName, Payload: ge.Payload}
	if hasID {
		j.ModelRecordID = &id
	}

	switch ge.EventName {
	case "created", "updated", "deleted":
		if !hasID {
			return job{}, nil, fmt.Sprintf("geo_events row %d (%s %s): payload has no integer model_record_id", ge.ID, ge.ReplicableName, ge.EventName)
		}
		if name == "" {
			return job{}, nil, fmt.Sprintf("geo_events row %d (%s): replicable_name is empty", ge.ID, ge.EventName)
		}
		op := &registryOp{registryKey: registryKey{ReplicableName: name, ModelRecordID: id}, EventID: ev.ID}
		if ge.EventName == "deleted" {
			j.Kind = KindDelete
			op.Delete = true
		} else {
			j.Kind = KindSync
		}
		return j, op, ""
	default:
		j.Kind = ge.EventName
		return j, nil, ""
	}
}

// payloadModelRecordID checks that payload is a JSON object and reads its
// top-level model_record_id if that is a JSON integer that fits in a bigint.
// A string, a fraction or null does not count: the id keys the registry, and
// guessing at it would write the wrong row. A repeated key counts as its last
// value, as in encoding/json and jsonb.
//
// It runs once per event on the holder's critical path, so it scans the
// validated bytes instead of decoding them into a map: decoding cost a third
// of the agent's CPU while draining a backlog.
func payloadModelRecordID(payload []byte) (id int64, hasID, isObject bool) {
	p := bytes.TrimSpace(payload)
	if len(p) == 0 || p[0] != '{' || !json.Valid(p) {
		return 0, false, false
	}
	// p is a valid object: '{' [ string ':' value { ',' string ':' value } ] '}'.
	i := skipSpace(p, 1)
	for p[i] != '}' {
		keyEnd := skipString(p, i)
		key := p[i:keyEnd]
		i = skipSpace(p, keyEnd)
		i = skipSpace(p, i+1) // the ':'
		valueEnd := skipValue(p, i)
		if isModelRecordIDKey(key) {
			id, hasID = 0, false
			if n, err := strconv.ParseInt(string(p[i:valueEnd]), 10, 64); err == nil {
				id, hasID = n, true
			}
		}
		i = skipSpace(p, valueEnd)
		if p[i] == ',' {
			i = skipSpace(p, i+1)
		}
	}
	return id, hasID, true
}

// isModelRecordIDKey reports whether the JSON string literal key (quotes
// included) decodes to model_record_id.
func isModelRecordIDKey(key []byte) bool {
	const want = `"model_record_id"`
	if bytes.IndexByte(key, '\\') < 0 {
		return string(key) == want
	}
	var s string
	return json.Unmarshal(key, &s) == nil && s == want[1:len(want)-1]
}

// The skip functions walk JSON that json.Valid accepted; each returns the
// index just past what it skipped.

func endsLiteral(c byte) bool {
	switch c {
	case ',', '}', ']', ' ', '\t', '\n', '\r':
		return true
	}
	return false
}

func skipSpace(p []byte, i int) int {
	for i < len(p) && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r') {
		i++
	}
	return i
}

// skipString skips the string literal that starts at p[i] == '"'.
func skipString(p []byte, i int) int {
	for i++; p[i] != '"'; i++ {
		if p[i] == '\\' {
			i++ // the escaped character; \uXXXX's hex digits are plain
		}
	}
	return i + 1
}

// skipValue skips the value that starts at p[i].
func skipValue(p []byte, i int) int {
	switch p[i] {
	case '"':
		return skipString(p, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch p[i] {
			case '"':
				i = skipString(p, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	default: // a number, true, false or null
		for i < len(p) && !endsLiteral(p[i]) {
			i++
		}
		return i
	}
}

// deadRow is how a dead letter records the event: the log row and whatever
// was joined to it, so that it can be understood and replayed by hand.
type deadRow struct {
	ID                       int64                  `json:"id"`
	CreatedAt                time.Time              `json:"created_at"`
	GeoEventID               *int64                 `json:"geo_event_id"`
	CacheInvalidationEventID *int64                 `json:"cache_invalidation_event_id"`
	GeoEvent                 *deadGeoEvent          `json:"geo_event"`
	CacheInvalidation        *deadCacheInvalidation `json:"cache_invalidation_event"`
}

type deadGeoEvent struct {
	ID             int64     `json:"id"`
	ReplicableName string    `json:"replicable_name"`
	EventName      string    `json:"event_name"`
	Payload        any       `json:"payload"`
	CreatedAt      time.Time `json:"created_at"`
}

// deadCacheInvalidation is a cache invalidation row in a dead letter.
type deadCacheInvalidation struct {
	ID  int64  `json:"id"`
	Key string `json:"key"`
}

func rowJSON(ev Event) []byte {
	r := deadRow{
		ID:                       ev.ID,
		CreatedAt:                ev.CreatedAt.UTC(),
		GeoEventID:               ev.GeoEventID,
		CacheInvalidationEventID: ev.CacheInvalidationEventID,
	}
	if ge := ev.GeoEvent; ge != nil {
		d := &deadGeoEvent{ID: ge.ID, ReplicableName: ge.ReplicableName, EventName: ge.EventName, CreatedAt: ge.CreatedAt.UTC()}
		// Keep the payload as JSON when it is JSON, and as text otherwise,
		// so that the dead letter itself is always valid JSON.
		if json.Valid(ge.Payload) {
			d.Payload = json.RawMessage(ge.Payload)
		} else if ge.Payload != nil {
			d.Payload = string(ge.Payload)
		}
		r.GeoEvent = d
	}
	if ci := ev.CacheInvalidation; ci != nil {
		r.CacheInvalidation = &deadCacheInvalidation{ID: ci.ID, Key: ci.Key}
	}
	b, err := json.Marshal(r)
	if err != nil {
		// Every field above marshals; keep the event ID whatever happens.
		return []byte(fmt.Sprintf(`{"id":%d}`, ev.ID))
	}
	return b
}
