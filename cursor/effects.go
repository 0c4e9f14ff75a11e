package cursor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
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
	ModelRecordID  *int64
	Payload        []byte // a JSON object
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
	fields, ok := jsonObject(ge.Payload)
	if !ok {
		return job{}, nil, fmt.Sprintf("geo_events row %d: payload is not a JSON object", ge.ID)
	}
	name := ge.ReplicableName
	j := job{EventID: ev.ID, ReplicableName: &name, Payload: ge.Payload}
	id, hasID := modelRecordID(fields)
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

// jsonObject decodes payload if it is a JSON object, keeping numbers exact.
func jsonObject(payload []byte) (map[string]json.RawMessage, bool) {
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return nil, false
	}
	return fields, true
}

// modelRecordID reads payload.model_record_id if it is a JSON integer that
// fits in a bigint. A string, a fraction or null does not count: the id keys
// the registry, and guessing at it would write the wrong row.
func modelRecordID(fields map[string]json.RawMessage) (int64, bool) {
	raw, ok := fields["model_record_id"]
	if !ok {
		return 0, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return 0, false
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	id, err := n.Int64()
	if err != nil {
		return 0, false
	}
	return id, true
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
