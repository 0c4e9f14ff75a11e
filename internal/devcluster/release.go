package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildCommit builds ./cmd/geocursor as it was at commit of the git
// repository that holds the working directory into outDir/geocursor-NAME
// (NAME the commit's short form), creating outDir, and returns the
// binary's path. It checks the commit out into a temporary worktree of
// that repository (git worktree add --detach), builds there, and removes
// the worktree again. Modules come from the module cache or GOPROXY.
//
// A commit the clone does not have (a shallow clone, as some CI systems
// make) is an error that says how to fetch it.
func BuildCommit(ctx context.Context, commit, outDir string) (string, error) {
	cwd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("build %s: %w", commit, err)
	}
	root, err := git(ctx, cwd, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("build %s: find the repository of %s: %w", commit, cwd, err)
	}
	full, err := git(ctx, root, "rev-parse", "--verify", "--quiet", commit+"^{commit}")
	if err != nil {
		shallow, _ := git(ctx, root, "rev-parse", "--is-shallow-repository")
		return "", fmt.Errorf("build %s: the repository at %s does not have commit %s (shallow clone: %s): "+
			"fetch it first, e.g. `git fetch --unshallow` or `git fetch origin %s`", commit, root, commit, shallow, commit)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", outDir, err)
	}
	wt, err := os.MkdirTemp("", "geocursor-worktree-")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", commit, err)
	}
	// git worktree add wants to create the directory itself.
	if err := os.Remove(wt); err != nil {
		return "", fmt.Errorf("build %s: %w", commit, err)
	}
	if _, err := git(ctx, root, "worktree", "add", "--detach", wt, full); err != nil {
		return "", fmt.Errorf("build %s: %w", commit, err)
	}
	defer func() {
		// Leave no worktree registered in the repository, even when the
		// build failed; prune catches one whose directory is gone.
		if _, err := git(context.WithoutCancel(ctx), root, "worktree", "remove", "--force", wt); err != nil {
			os.RemoveAll(wt)
			git(context.WithoutCancel(ctx), root, "worktree", "prune") //nolint:errcheck // best effort after a failed remove
		}
	}()

	out := filepath.Join(outDir, "geocursor-"+shortCommit(full))
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "-ldflags", "-X main.commit="+shortCommit(full), "./cmd/geocursor")
	cmd.Dir = wt
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/geocursor at commit %s: %v\n%s", commit, err, b)
	}
	return out, nil
}

func shortCommit(full string) string {
	if len(full) > 12 {
		return full[:12]
	}
	return full
}

// git runs git in dir and returns its trimmed standard output; an error
// carries its standard error.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(b)), nil
}
