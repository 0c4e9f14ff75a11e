package gitlab

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Querier is what the role needs of the source database (a pgxpool.Pool).
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Role is the site's role as GitLab's geo_nodes says it.
type Role string

const (
	RoleSecondary Role = "secondary"
	RolePrimary   Role = "primary"
	// RoleMissing: no geo_nodes row has the site's name.
	RoleMissing Role = "missing"
	// RoleUnknown: not read yet, or the last read failed.
	RoleUnknown Role = "unknown"
)

// ReadRole reads the role of the site named name from the source's
// geo_nodes, as Gitlab::Geo.secondary? decides it: the row whose name is
// the site's (GeoNode.current_node), and its primary flag.
func ReadRole(ctx context.Context, q Querier, name string) (Role, error) {
	var primary bool
	err := q.QueryRow(ctx, `SELECT "primary" FROM geo_nodes WHERE name = $1`, name).Scan(&primary)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return RoleMissing, nil
	case err != nil:
		return RoleUnknown, fmt.Errorf("read this site's role from geo_nodes: %w", err)
	case primary:
		return RolePrimary, nil
	}
	return RoleSecondary, nil
}

// InRecovery reports whether the source is a standby (pg_is_in_recovery):
// this site's replica of the primary, as it should be, rather than the
// primary's own database.
func InRecovery(ctx context.Context, q Querier) (bool, error) {
	var rec bool
	if err := q.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&rec); err != nil {
		return false, fmt.Errorf("ask the source whether it is a standby: %w", err)
	}
	return rec, nil
}
