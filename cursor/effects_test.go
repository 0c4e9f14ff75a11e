package cursor

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// geo builds an event that references an existing geo_events row.
func geo(id int64, replicable, event, payload string) Event {
	geoID := 1000 + id
	return Event{
		ID: id, CreatedAt: eventTime(id), GeoEventID: &geoID,
		GeoEvent: &GeoEvent{ID: geoID, ReplicableName: replicable, EventName: event, Payload: []byte(payload), CreatedAt: eventTime(id)},
	}
}

func cache(id int64, key string) Event {
	cacheID := 2000 + id
	return Event{
		ID: id, CreatedAt: eventTime(id), CacheInvalidationEventID: &cacheID,
		CacheInvalidation: &CacheInvalidation{ID: cacheID, Key: key},
	}
}

func TestClassifyOne(t *testing.T) {
	missingGeo := Event{ID: 5, CreatedAt: eventTime(5), GeoEventID: ptr(int64(77))}
	missingCache := Event{ID: 6, CreatedAt: eventTime(6), CacheInvalidationEventID: ptr(int64(88))}
	both := cache(7, "k")
	both.GeoEventID = ptr(int64(1))

	tests := []struct {
		name       string
		event      Event
		wantJob    job
		wantOp     *registryOp
		wantReason string
	}{
		{
			name:    "created is a sync job and a registry upsert",
			event:   geo(1, "project_repository", "created", `{"model_record_id": 42}`),
			wantJob: job{EventID: 1, Kind: KindSync, ReplicableName: ptr("project_repository"), EventName: ptr("created"), ModelRecordID: ptr(int64(42)), Payload: []byte(`{"model_record_id": 42}`)},
			wantOp:  &registryOp{registryKey: registryKey{"project_repository", 42}, EventID: 1},
		},
		{
			name:    "updated is a sync job and a registry upsert",
			event:   geo(2, "lfs_object", "updated", `{"model_record_id": 9, "checksum": "abc"}`),
			wantJob: job{EventID: 2, Kind: KindSync, ReplicableName: ptr("lfs_object"), EventName: ptr("updated"), ModelRecordID: ptr(int64(9)), Payload: []byte(`{"model_record_id": 9, "checksum": "abc"}`)},
			wantOp:  &registryOp{registryKey: registryKey{"lfs_object", 9}, EventID: 2},
		},
		{
			name:    "deleted is a delete job with the payload and a registry delete",
			event:   geo(3, "package_file", "deleted", `{"model_record_id": 5, "blob_path": "a/b"}`),
			wantJob: job{EventID: 3, Kind: KindDelete, ReplicableName: ptr("package_file"), EventName: ptr("deleted"), ModelRecordID: ptr(int64(5)), Payload: []byte(`{"model_record_id": 5, "blob_path": "a/b"}`)},
			wantOp:  &registryOp{registryKey: registryKey{"package_file", 5}, EventID: 3, Delete: true},
		},
		{
			name:    "model_record_id beyond 2^53 stays exact",
			event:   geo(4, "lfs_object", "created", `{"model_record_id": 9007199254740993}`),
			wantJob: job{EventID: 4, Kind: KindSync, ReplicableName: ptr("lfs_object"), EventName: ptr("created"), ModelRecordID: ptr(int64(9007199254740993)), Payload: []byte(`{"model_record_id": 9007199254740993}`)},
			wantOp:  &registryOp{registryKey: registryKey{"lfs_object", 9007199254740993}, EventID: 4},
		},
		{
			name:    "another event name is a job of that kind",
			event:   geo(5, "project_repository", "reset_checksum", `{"model_record_id": 3}`),
			wantJob: job{EventID: 5, Kind: "reset_checksum", ReplicableName: ptr("project_repository"), EventName: ptr("reset_checksum"), ModelRecordID: ptr(int64(3)), Payload: []byte(`{"model_record_id": 3}`)},
		},
		{
			name:    "another event name without model_record_id has a null one",
			event:   geo(6, "container_repository", "renamed", `{"old": "a"}`),
			wantJob: job{EventID: 6, Kind: "renamed", ReplicableName: ptr("container_repository"), EventName: ptr("renamed"), Payload: []byte(`{"old": "a"}`)},
		},
		{
			name:    "cache invalidation",
			event:   cache(7, "projects/1"),
			wantJob: job{EventID: 7, Kind: KindCacheInvalidation, Payload: []byte(`{"key":"projects/1"}`)},
		},
		{
			name:       "no reference",
			event:      Event{ID: 8, CreatedAt: eventTime(8)},
			wantReason: "geo_event_log row has no geo_event_id or cache_invalidation_event_id",
		},
		{
			name:       "both references",
			event:      both,
			wantReason: "geo_event_log row has both a geo_event_id and a cache_invalidation_event_id",
		},
		{
			name:       "referenced geo event missing",
			event:      missingGeo,
			wantReason: "geo_events row 77 does not exist",
		},
		{
			name:       "referenced cache invalidation missing",
			event:      missingCache,
			wantReason: "geo_cache_invalidation_events row 88 does not exist",
		},
		{
			name:       "payload is an array",
			event:      geo(9, "lfs_object", "created", `[1, 2]`),
			wantReason: "geo_events row 1009: payload is not a JSON object",
		},
		{
			name:       "payload is a string",
			event:      geo(10, "lfs_object", "reset_checksum", `"x"`),
			wantReason: "geo_events row 1010: payload is not a JSON object",
		},
		{
			name:       "payload is not JSON",
			event:      geo(11, "lfs_object", "created", `{nope`),
			wantReason: "geo_events row 1011: payload is not a JSON object",
		},
		{
			name:       "created without model_record_id",
			event:      geo(12, "lfs_object", "created", `{}`),
			wantReason: "geo_events row 1012 (lfs_object created): payload has no integer model_record_id",
		},
		{
			name:       "updated with a string model_record_id",
			event:      geo(13, "lfs_object", "updated", `{"model_record_id": "42"}`),
			wantReason: "geo_events row 1013 (lfs_object updated): payload has no integer model_record_id",
		},
		{
			name:       "deleted with a fractional model_record_id",
			event:      geo(14, "lfs_object", "deleted", `{"model_record_id": 4.5}`),
			wantReason: "geo_events row 1014 (lfs_object deleted): payload has no integer model_record_id",
		},
		{
			name:       "created with a null model_record_id",
			event:      geo(15, "lfs_object", "created", `{"model_record_id": null}`),
			wantReason: "geo_events row 1015 (lfs_object created): payload has no integer model_record_id",
		},
		{
			name:       "model_record_id too large for a bigint",
			event:      geo(16, "lfs_object", "created", `{"model_record_id": 9223372036854775808}`),
			wantReason: "geo_events row 1016 (lfs_object created): payload has no integer model_record_id",
		},
		{
			name:       "empty event name",
			event:      geo(17, "lfs_object", "", `{}`),
			wantReason: "geo_events row 1017 has no event_name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, op, reason := classifyOne(tt.event)
			if reason != tt.wantReason {
				t.Fatalf("reason = %q, want %q", reason, tt.wantReason)
			}
			if reason != "" {
				return
			}
			if !reflect.DeepEqual(j, tt.wantJob) {
				t.Errorf("job = %s, want %s", fmtJob(j), fmtJob(tt.wantJob))
			}
			if !reflect.DeepEqual(op, tt.wantOp) {
				t.Errorf("registry op = %+v, want %+v", op, tt.wantOp)
			}
		})
	}
}

func fmtJob(j job) string {
	b, _ := json.Marshal(struct {
		job
		Payload string
	}{j, string(j.Payload)})
	return string(b)
}

func TestClassifyKeepsTheLastEventPerRecord(t *testing.T) {
	events := []Event{
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(2, "lfs_object", "updated", `{"model_record_id": 1}`),
		geo(3, "lfs_object", "deleted", `{"model_record_id": 2}`),
		geo(4, "lfs_object", "deleted", `{"model_record_id": 1}`),
		geo(5, "package_file", "created", `{"model_record_id": 1}`),
		geo(9, "lfs_object", "created", `{"model_record_id": 2}`),
		geo(7, "lfs_object", "updated", `{"model_record_id": 2}`), // out of order: 9 still wins
		geo(8, "lfs_object", "reset_checksum", `{"model_record_id": 1}`),
		{ID: 10, CreatedAt: eventTime(10)},
		cache(11, "k"),
	}
	eff := classify(events)

	wantOps := []registryOp{
		{registryKey: registryKey{"lfs_object", 1}, EventID: 4, Delete: true},
		{registryKey: registryKey{"lfs_object", 2}, EventID: 9},
		{registryKey: registryKey{"package_file", 1}, EventID: 5},
	}
	if !reflect.DeepEqual(eff.Registry, wantOps) {
		t.Errorf("registry ops = %+v, want %+v", eff.Registry, wantOps)
	}
	var jobIDs []int64
	for _, j := range eff.Jobs {
		jobIDs = append(jobIDs, j.EventID)
	}
	if want := []int64{1, 2, 3, 4, 5, 9, 7, 8, 11}; !reflect.DeepEqual(jobIDs, want) {
		t.Errorf("job event IDs = %v, want %v (one per event that is not a dead letter)", jobIDs, want)
	}
	if len(eff.DeadLetters) != 1 || eff.DeadLetters[0].EventID != 10 {
		t.Errorf("dead letters = %+v, want event 10 only", eff.DeadLetters)
	}
}

func TestDeadLetterRowCarriesTheLogRowAndTheJoinedRow(t *testing.T) {
	ev := geo(3, "lfs_object", "created", `{"a": 1}`)
	eff := classify([]Event{ev})
	if len(eff.DeadLetters) != 1 {
		t.Fatalf("dead letters = %+v, want one", eff.DeadLetters)
	}
	var got map[string]any
	if err := json.Unmarshal(eff.DeadLetters[0].Row, &got); err != nil {
		t.Fatalf("row is not JSON: %v: %s", err, eff.DeadLetters[0].Row)
	}
	want := map[string]any{
		"id":                          3.0,
		"created_at":                  eventTime(3).Format(time.RFC3339Nano),
		"geo_event_id":                1003.0,
		"cache_invalidation_event_id": nil,
		"geo_event": map[string]any{
			"id": 1003.0, "replicable_name": "lfs_object", "event_name": "created",
			"payload": map[string]any{"a": 1.0}, "created_at": eventTime(3).Format(time.RFC3339Nano),
		},
		"cache_invalidation_event": nil,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("row = %v\nwant  %v", got, want)
	}

	// A payload that is not JSON at all is kept as a string, so the dead
	// letter is still valid JSON.
	bad := geo(4, "lfs_object", "created", `{nope`)
	row := classify([]Event{bad}).DeadLetters[0].Row
	if !json.Valid(row) {
		t.Errorf("row with a broken payload is not JSON: %s", row)
	}
}
