package cluster

import (
	"embed"
	"io/fs"
	"net/http"

	"github.com/geocursor/geocursor/api"
)

// uiFiles is the status page (GET /ui/): one HTML page, one script and one
// style sheet, plain and served as they are, so that the binary needs no
// build step and the page nothing from outside.
//
//go:embed ui
var uiFiles embed.FS

// uiPolicy lets the page load only its own files and talk only to the node
// that served it, so that it cannot be made to send the token elsewhere,
// nor be framed by another site.
const uiPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// uiHandler serves the status page. The page is static and holds no
// secret, so anyone may load it; every request it makes for data carries
// the token its user gives it, and the API checks it as for any caller.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	files := http.StripPrefix(api.PathUI, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
