package systemtest

// The status page (issue 12) in a real browser: headless Chromium, driven
// through the DevTools protocol with chromedp, against a secured
// three-agent cluster under load.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// envUIScreenshot names a file to which TestStatusPageFollowsAFailoverLive
// also writes its screenshot (it always writes one to its artifact
// directory: go test -artifacts keeps it).
const envUIScreenshot = "GEOCURSOR_UI_SCREENSHOT"

// chromium returns the path of Debian's chromium, or skips the test:
// .ci/run installs it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("needs a Chromium to drive the status page: apt-get install chromium (.ci/run installs it)")
	return ""
}

// page is one browser tab on the status page.
type page struct {
	t   *testing.T
	ctx context.Context
}

// openBrowser starts headless Chromium with a laptop's window. The agents'
// certificates come from the test's own CA, which the browser does not
// know: it is told to accept them (ignore-certificate-errors), as the test
// is about the page, and the API's TLS is checked elsewhere.
func openBrowser(t *testing.T, path string) *page {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.IgnoreCertErrors,
		chromedp.WindowSize(1366, 768),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// The first action starts the browser, bound to ctx: give it no
	// deadline of its own.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	return &page{t: t, ctx: ctx}
}

func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// view is what the page shows, read from its DOM.
type view struct {
	LoginShown bool   `json:"login_shown"`
	AppShown   bool   `json:"app_shown"`
	LoginError string `json:"login_error"`
	Holder     string `json:"holder"`
	Members    int    `json:"members"`
	Overall    string `json:"overall"`
	Conn       string `json:"conn"`
	// Failovers are the rows of the failover table, as "from>to".
	Failovers []string `json:"failovers"`
	// DataRequests counts the page's requests to /v1/.
	DataRequests int `json:"data_requests"`
	// Marker is set by the test in the page's window: it is lost on a
	// reload.
	Marker string `json:"marker"`
	// Loading says the document is being loaded again: nothing else is
	// set.
	Loading bool `json:"loading"`
}

const readView = `(() => {
  const $ = (id) => document.getElementById(id);
  if (!$('login') || !$('app')) return { loading: true }; // a reload under way
  return {
    login_shown: !$('login').hidden,
    app_shown: !$('app').hidden,
    login_error: $('login-error').textContent,
    holder: $('holder').textContent,
    members: $('members').querySelectorAll('tr[data-node]').length,
    overall: $('overall-text').textContent,
    conn: $('conn').textContent,
    failovers: [...$('failovers').querySelectorAll('tr[data-from]')].map((r) => r.dataset.from + '>' + r.dataset.to),
    data_requests: performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname.startsWith('/v1/')).length,
    marker: window.geocursorTestMarker || '',
  };
})()`

func (p *page) view() view {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](readView))
	if err != nil {
		p.t.Fatalf("read the page: %v", err)
	}
	var v view
	if err := json.Unmarshal(raw, &v); err != nil {
		p.t.Fatalf("read the page: %v: %s", err, raw)
	}
	return v
}

func (p *page) waitView(timeout time.Duration, what string, cond func(v view) (bool, string)) view {
	p.t.Helper()
	var v view
	ts.WaitFor(p.t, timeout, what, func() (bool, string) {
		v = p.view()
		ok, detail := cond(v)
		return ok, fmt.Sprintf("%s (page: %+v)", detail, v)
	})
	return v
}

// signIn types token into the sign-in form and submits it as a person
// would, by clicking its button.
func (p *page) signIn(token string) {
	p.t.Helper()
	p.do("sign in",
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('token').value = ''`),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("login-submit")),
	)
}

func (p *page) screenshot() []byte {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot: %v", err)
	}
	return png
}

// holderOf is the lease holder st shows, "" when the lease is free.
func holderOf(st api.Status) string {
	if st.Lease.Holder == nil {
		return ""
	}
	return *st.Lease.Holder
}

// TestStatusPageFollowsAFailoverLive opens /ui/ of a secured cluster under
// load in Chromium: without a token it shows the sign-in form and no data,
// and a wrong token is refused; with the read token it shows the lease
// holder of /v1/status; after the holder is SIGKILLed it shows the new
// holder and the failover without a reload. A token the node refuses
// brings the sign-in form back.
func TestStatusPageFollowsAFailoverLive(t *testing.T) {
	browserPath := chromium(t)
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, Secure: true})
	bg := startLoad(t, d, loadgen.Config{
		Writers: 4, Rate: 400,
		RollbackFraction: 0.01, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.02, Seed: 12,
	})
	first := waitCursor(t, c.Agents, 200, 30*time.Second)
	clk.Logf("cluster processing under load: cursor at %d, %s", first.Cursor.LastEventID, leaseString(first))

	// The page is opened on an agent that does not hold the lease, so
	// that it stays up when the holder is killed.
	holder := ""
	ts.WaitFor(t, 10*time.Second, "a lease holder", func() (bool, string) {
		st, err := anyStatus(c.Agents)
		if err != nil {
			return false, err.Error()
		}
		holder = holderOf(st)
		return holder != "", leaseString(st)
	})
	var ui *ts.Agent
	for _, a := range c.Agents {
		if a.ID != holder {
			ui = a
			break
		}
	}
	url := "https://" + ui.HTTPAddr + api.PathUI
	p := openBrowser(t, browserPath)
	p.do("open "+url, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("login")))
	t.Cleanup(func() {
		if t.Failed() {
			path := filepath.Join(t.ArtifactDir(), "status-page-at-failure.png")
			if err := os.WriteFile(path, p.screenshot(), 0o644); err == nil {
				t.Logf("screenshot at the failure: %s", path)
			}
		}
	})

	// No token: the sign-in form and no data, nor any request for it.
	v := p.view()
	if !v.LoginShown || v.AppShown || v.Holder != "" || v.Members != 0 || v.DataRequests != 0 {
		t.Fatalf("without a token the page shows %+v; want the sign-in form only, and no request for data", v)
	}
	clk.Logf("without a token: the sign-in form, no data, no request to /v1/")

	// A wrong token is refused, and still nothing is shown.
	p.signIn("not-the-read-token-of-this-cluster")
	v = p.waitView(10*time.Second, "the wrong token refused", func(v view) (bool, string) {
		return strings.Contains(v.LoginError, "refused"), "no refusal shown yet"
	})
	if v.AppShown || v.Holder != "" {
		t.Fatalf("after a wrong token the page shows %+v; want no data", v)
	}
	clk.Logf("a wrong token: %q", v.LoginError)

	// The read token: the page shows the holder the status shows.
	p.signIn(c.Security.ReadToken)
	showsHolder := func() {
		t.Helper()
		p.waitView(15*time.Second, "the page to show the holder of "+api.PathStatus, func(v view) (bool, string) {
			st, err := statusOf(ui)
			if err != nil {
				return false, err.Error()
			}
			if h := holderOf(st); h != "" {
				holder = h
			}
			return v.AppShown && v.Members == 3 && v.Holder == holder, "status: " + leaseString(st)
		})
	}
	showsHolder()
	clk.Logf("signed in with the read token: the page shows %s holding the lease", holder)

	// Kill the holder; the page must show another one, by itself. A
	// standby can win the lease now and then: should the lease have moved
	// to the agent that serves the page, the page is opened on another.
	var victim *ts.Agent
	for attempt := 1; victim == nil; attempt++ {
		ts.WaitFor(t, 10*time.Second, "a lease holder", func() (bool, string) {
			st, err := statusOf(ui)
			if err != nil {
				return false, err.Error()
			}
			holder = holderOf(st)
			return holder != "", leaseString(st)
		})
		if holder != ui.ID {
			victim = c.Agent(t, holder)
			break
		}
		if attempt == 3 {
			t.Fatalf("the lease keeps moving to the agent that serves the page (%s)", ui.ID)
		}
		for _, a := range c.Agents {
			if a.ID != holder {
				ui = a
				break
			}
		}
		clk.Logf("the lease moved to %s, which served the page: opening it on %s", holder, ui.ID)
		url = "https://" + ui.HTTPAddr + api.PathUI
		p.do("open "+url, chromedp.Navigate(url))
		p.signIn(c.Security.ReadToken) // another origin: the tab's token is not there
		showsHolder()
	}
	p.do("mark the page", chromedp.Evaluate[chromedp.Void](`window.geocursorTestMarker = 'loaded once'`))
	victim.Kill(t)
	killed := time.Now()
	clk.Logf("SIGKILLed the holder %s; the page is served by %s", victim.ID, ui.ID)
	v = p.waitView(20*time.Second, "the page to show a new holder", func(v view) (bool, string) {
		return v.Holder != "" && v.Holder != "none" && v.Holder != victim.ID, "holder " + v.Holder
	})
	clk.Logf("the page shows the new holder %s %s after the kill", v.Holder, time.Since(killed).Round(time.Millisecond))
	newHolder := v.Holder
	v = p.waitView(10*time.Second, "the page to list the failover", func(v view) (bool, string) {
		for _, f := range v.Failovers {
			if strings.HasPrefix(f, victim.ID+">") && !strings.HasSuffix(f, ">") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("failovers %q", v.Failovers)
	})
	if v.Marker != "loaded once" {
		t.Fatalf("the page was reloaded (its marker is %q): it must follow the cluster by itself", v.Marker)
	}
	if st, err := statusOf(ui); err == nil && holderOf(st) != "" && holderOf(st) != v.Holder && holderOf(st) != newHolder {
		t.Errorf("the page shows %s holding the lease, %s says %s", v.Holder, api.PathStatus, leaseString(st))
	}
	clk.Logf("the page lists the failover %q, without a reload; overall: %q", v.Failovers, v.Overall)

	// A few seconds of the new holder, so that the timeline shows both.
	time.Sleep(3 * time.Second)
	png := p.screenshot()
	path := filepath.Join(t.ArtifactDir(), "status-page.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("write the screenshot: %v", err)
	}
	t.Logf("screenshot: %s (kept with go test -artifacts)", path)
	if extra := os.Getenv(envUIScreenshot); extra != "" {
		if err := os.WriteFile(extra, png, 0o644); err != nil {
			t.Fatalf("write the screenshot to %s=%s: %v", envUIScreenshot, extra, err)
		}
		t.Logf("screenshot also written to %s", extra)
	}

	// A token the node refuses (as after a rotation) brings the sign-in
	// form back, with no data.
	p.do("store a stale token and reload", chromedp.Evaluate[chromedp.Void](
		`sessionStorage.setItem('geocursor.readToken', 'a-token-rotated-away-long-ago'); setTimeout(() => location.reload(), 0)`))
	v = p.waitView(15*time.Second, "the sign-in form after a refused token", func(v view) (bool, string) {
		return v.LoginShown && !v.AppShown && strings.Contains(v.LoginError, "refused"), ""
	})
	if v.Holder != "" || v.Members != 0 {
		t.Errorf("after a refused token the page still shows data: %+v", v)
	}
	clk.Logf("a refused token: the sign-in form again (%q)", v.LoginError)

	bg.stop(t)
	checkOutcome(t, d, c)
	clk.Logf("every event processed exactly once")
}
