package chaos

import (
	"context"
	"fmt"
	"os"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// BuildBinary builds ./cmd/geocursor of the module that holds the working
// directory into dir and returns the binary's path.
func BuildBinary(ctx context.Context, dir string) (string, error) {
	root, err := devcluster.ModuleRoot()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	return devcluster.Build(ctx, root, dir)
}
