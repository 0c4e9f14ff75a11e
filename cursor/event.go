package cursor

import "time"

// Event is one geo_event_log row joined with the row it references.
//
// The references are kept as stored, separately from the joined rows, so that
// a reference to a row that does not exist (or not yet, or no longer) can be
// told apart from no reference at all; both end as dead letters with
// different reasons.
type Event struct {
	ID int64
	// CreatedAt is geo_event_log.created_at, in UTC.
	CreatedAt time.Time

	// GeoEventID and CacheInvalidationEventID are the references as stored;
	// nil means NULL.
	GeoEventID               *int64
	CacheInvalidationEventID *int64

	// GeoEvent is filled when the referenced geo_events row exists.
	GeoEvent *GeoEvent
	// CacheInvalidation is filled when the referenced
	// geo_cache_invalidation_events row exists.
	CacheInvalidation *CacheInvalidation
}

// GeoEvent is a geo_events row: something happened to one replicable record.
type GeoEvent struct {
	ID             int64
	ReplicableName string
	EventName      string
	// Payload is the jsonb column as the database prints it. It is kept raw
	// because it is copied into the tracking database mostly unchanged, and
	// because a payload that is not what we expect must be recorded as it was.
	Payload   []byte
	CreatedAt time.Time
}

// CacheInvalidation is a geo_cache_invalidation_events row.
type CacheInvalidation struct {
	ID  int64
	Key string
}
