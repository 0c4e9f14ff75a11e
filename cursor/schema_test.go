package cursor

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestOpenTrackingRefusesASchemaItMustNotRunOn: a tracking database that
// a newer agent migrated with a migration older agents must not write
// around (needs_version) is refused, naming both schema versions; one
// whose newer migrations only add is run on, with a warning, so that a
// node restarting half-way through an upgrade still starts.
func TestOpenTrackingRefusesASchemaItMustNotRunOn(t *testing.T) {
	dsn := newDatabase(t, "tracking")
	tr, err := OpenTracking(testContext(t), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	known := migrations[len(migrations)-1].version
	conn := connect(t, dsn)

	// A newer release's migration that only adds.
	if _, err := conn.Exec(testContext(t), `INSERT INTO geocursor_schema_migrations (version) VALUES ($1)`, known+1); err != nil {
		t.Fatal(err)
	}
	tr, err = OpenTracking(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("a newer schema that older agents may run on: %v", err)
	}
	tr.Close()

	// A newer release's migration that older agents must not write around.
	if _, err := conn.Exec(testContext(t), `INSERT INTO geocursor_schema_migrations (version, needs_version) VALUES ($1, $1)`, known+2); err != nil {
		t.Fatal(err)
	}
	tr, err = OpenTracking(testContext(t), dsn, nil)
	if err == nil {
		tr.Close()
		t.Fatal("OpenTracking ran on a schema that needs a newer agent")
	}
	if !errors.Is(err, ErrSchemaNewer) {
		t.Errorf("err = %v, want %v", err, ErrSchemaNewer)
	}
	for _, want := range []string{fmt.Sprintf("schema is at version %d", known+2), fmt.Sprintf("schema version %d or later", known+2), fmt.Sprintf("knows schema version %d at most", known)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}
