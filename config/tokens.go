package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Where the acl block's tokens come from. A token given in the file or by
// the environment is fixed for the life of the process as far as the
// environment is concerned; one in a token file is read at every load, so
// SIGHUP rotates it (design section 10).

// tokenSpec is one of the acl block's tokens and where Load keeps it.
type tokenSpec struct {
	key, fileKey, envVar string
	value, file, env     *string
}

func tokenSpecs(a *ACLConfig) []tokenSpec {
	return []tokenSpec{
		{"acl.operator_token", "acl.operator_token_file", EnvOperatorToken, &a.OperatorToken, &a.OperatorTokenFile, &a.OperatorTokenEnv},
		{"acl.read_token", "acl.read_token_file", EnvReadToken, &a.ReadToken, &a.ReadTokenFile, &a.ReadTokenEnv},
		{"acl.join_token", "acl.join_token_file", EnvJoinToken, &a.JoinToken, &a.JoinTokenFile, &a.JoinTokenEnv},
	}
}

// readTokenFiles reads the token of each *_token_file of a (nil: no acl
// block). A token given both in a file and otherwise is an error: the
// agent would have to pick one, and a reload that re-read the file would
// seem to rotate a token that the other source still fixes.
func readTokenFiles(a *ACLConfig, o origins) error {
	if a == nil {
		return nil
	}
	for _, t := range tokenSpecs(a) {
		if *t.file == "" {
			continue
		}
		fileAt := o.of(t.fileKey)
		if *t.value != "" {
			if strings.HasPrefix(o.of(t.key), "environment variable ") {
				return &Error{Where: o.of(t.key), Msg: fmt.Sprintf(
					"%s is set, and %s (at %s) gives the same token: a token comes from one place; unset %s (and take it out of any EnvironmentFile) so that the agent reads the file, which SIGHUP reads again",
					t.envVar, t.fileKey, fileAt, t.envVar)}
			}
			return &Error{Where: o.of(t.key), Msg: fmt.Sprintf(
				"%s and %s (at %s) are both set: a token comes from one place; keep %s, which SIGHUP reads again",
				t.key, t.fileKey, fileAt, t.fileKey)}
		}
		tok, perm, err := readTokenFile(*t.file)
		if err != nil {
			return &Error{Where: fileAt, Msg: fmt.Sprintf("%s %q: %v", t.fileKey, *t.file, err)}
		}
		*t.value, *t.env = tok, ""
		o[t.key] = fileAt
		if perm&0o077 != 0 {
			a.Warnings = append(a.Warnings, fmt.Sprintf(
				"%s: %s %q can be read or written by users other than its owner (mode %04o): set mode 0600 (chmod 0600 %s), owned by the user the agent runs as",
				fileAt, t.fileKey, *t.file, perm, *t.file))
		}
	}
	return nil
}

// readTokenFile reads the one token a token file holds, without the
// whitespace around it, and the file's permission bits.
func readTokenFile(path string) (string, os.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, unwrapPathError(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, unwrapPathError(err)
	}
	if !fi.Mode().IsRegular() {
		return "", 0, errors.New("is not a regular file: write the token into a file of its own")
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxTokenFileSize+1))
	if err != nil {
		return "", 0, unwrapPathError(err)
	}
	if len(data) > MaxTokenFileSize {
		return "", 0, fmt.Errorf("is larger than %d bytes: it must hold the token alone", MaxTokenFileSize)
	}
	tok := strings.TrimSpace(string(data))
	switch {
	case tok == "":
		return "", 0, fmt.Errorf("is empty: write the token into it (openssl rand -hex 32 > %s)", path)
	case strings.ContainsAny(tok, " \t\r\n\v\f"):
		return "", 0, errors.New("holds more than one word or line: it must hold the token alone")
	case strings.ContainsFunc(tok, func(r rune) bool { return r < 0x21 || r > 0x7e }):
		return "", 0, errors.New("holds characters other than letters, digits and punctuation: a token is sent in an HTTP header (generate one with openssl rand -hex 32)")
	}
	return tok, fi.Mode().Perm(), nil
}

// envVariableOf names the environment variable the attribute a reads
// (token = env.NAME), "" when it reads none or a is nil.
func envVariableOf(a *hcl.Attribute) string {
	if a == nil {
		return ""
	}
	for _, tr := range a.Expr.Variables() {
		if tr.RootName() != "env" {
			continue
		}
		if len(tr) > 1 {
			switch step := tr[1].(type) {
			case hcl.TraverseAttr:
				return step.Name
			case hcl.TraverseIndex:
				if step.Key.Type() == cty.String && step.Key.IsKnown() && !step.Key.IsNull() {
					return step.Key.AsString()
				}
			}
		}
		return "env"
	}
	return ""
}
