package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// ownDatabases are a source and a tracking database of one part's own
// (the gap and flat drains), which the bench's handles point at until
// release: the part's agents, its checks and its drain measurements then
// use them like the main ones.
type ownDatabases struct {
	b        *bench
	src, tr  *pgxpool.Pool
	saved    [4]any
	released bool
}

// useOwnDatabases creates source_NAME_SECURITY, bulk-loaded with n events
// (seed) and changed by prepare (nil: as loaded), vacuumed and
// checkpointed, and an empty tracking_NAME_SECURITY, and points the bench's
// handles at them. It returns the source's head.
func (b *bench) useOwnDatabases(ctx context.Context, name string, n int, seed int64, prepare func(*pgxpool.Pool) error) (*ownDatabases, int64, error) {
	if b.cluster != nil {
		return nil, 0, fmt.Errorf("the %s drain needs agents of its own, but agents are running", name)
	}
	o := &ownDatabases{b: b, saved: [4]any{b.sourceDSN, b.source, b.trackingDSN, b.tracking}}
	ok := false
	defer func() {
		if !ok {
			o.release()
		}
	}()
	srcDSN, err := b.pg.CreateDatabase(ctx, "source_"+name+"_"+b.security)
	if err != nil {
		return nil, 0, err
	}
	if o.src, err = harness.OpenPool(ctx, srcDSN, 16); err != nil {
		return nil, 0, err
	}
	if err := loadgen.CreateSourceSchema(ctx, o.src); err != nil {
		return nil, 0, err
	}
	if err := loadgen.BulkLoad(ctx, o.src, n, seed); err != nil {
		return nil, 0, err
	}
	if prepare != nil {
		if err := prepare(o.src); err != nil {
			return nil, 0, err
		}
	}
	if err := settle(ctx, o.src); err != nil {
		return nil, 0, err
	}
	head, err := harness.SourceHead(ctx, o.src)
	if err != nil {
		return nil, 0, err
	}
	trDSN, err := b.pg.CreateDatabase(ctx, "tracking_"+name+"_"+b.security)
	if err != nil {
		return nil, 0, err
	}
	if o.tr, err = harness.OpenPool(ctx, trDSN, 4); err != nil {
		return nil, 0, err
	}
	b.sourceDSN, b.source, b.trackingDSN, b.tracking = srcDSN, o.src, trDSN, o.tr
	ok = true
	return o, head, nil
}

// release closes the part's databases and points the bench's handles back
// at the main ones.
func (o *ownDatabases) release() {
	if o.released {
		return
	}
	o.released = true
	b := o.b
	b.sourceDSN, b.source = o.saved[0].(string), o.saved[1].(*pgxpool.Pool)
	b.trackingDSN, b.tracking = o.saved[2].(string), o.saved[3].(*pgxpool.Pool)
	if o.tr != nil {
		o.tr.Close()
	}
	if o.src != nil {
		o.src.Close()
	}
}
