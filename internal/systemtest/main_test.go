package systemtest

import (
	"fmt"
	"os"
	"testing"

	"github.com/geocursor/geocursor/internal/testsupport"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := testsupport.RemoveBinary(); err != nil {
		fmt.Fprintf(os.Stderr, "remove the test build of geocursor: %v\n", err)
	}
	os.Exit(code)
}
