// Command loadgen sends AdmissionReviews to the webhook over TLS the way a kube-apiserver does, and
// prints what came back as JSON on stdout. It is bench/admission_latency.py's load generator: a
// Python client on the same small machine runs out of CPU before the webhook does.
//
// Its connections behave like the API server's webhook client (k8s.io/apiserver/pkg/util/webhook
// over net/http's Transport): HTTP/1.1 only (ALPN http/1.1), keep-alive, at most 25 idle
// connections kept; a request that finds none idle dials a new one and takes whichever comes
// first, its own dial or a connection another request frees (the dial's connection then goes to
// the idle pool, or is closed if the pool is full); no limit on open connections; a deadline of
// -timeout per request, announced in ?timeout=, after which its connection is closed. It speaks
// HTTP/1.1 itself rather than through net/http, which costs twice the CPU per request: this
// process shares the machine with the webhook it measures.
//
// Modes:
//   - open: request i is due at start + i/rate whatever happened before (open loop); its latency
//     is counted from when it was due, so queueing anywhere counts (no coordinated omission).
//     -ramp first raises the rate from nothing, uncounted.
//   - closed: -workers goroutines each send the next request as soon as the last one is
//     answered, for -seconds: the most the webhook answers in a second.
//
// Standard library only: `go build` needs no module download.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Outcome of one request, as the API server would see it.
const (
	full      = "full"    // 200 with an AdmissionReview answered by the webhook's admission logic
	shed      = "shed"    // 200, allowed, carrying the -shed-marker warning
	status    = "status"  // any other HTTP status (the webhook answered, but not with a review)
	timeout   = "timeout" // no answer within -timeout: the API server gives up and fails open
	connError = "conn"    // connection refused, reset or closed without an answer
)

// The API server's webhook transport (k8s.io/client-go/transport): 25 idle connections per host,
// a 30 s TCP dial timeout, a 10 s TLS handshake timeout.
const (
	dialTimeout      = 30 * time.Second
	handshakeTimeout = 10 * time.Second
)

type result struct {
	Latency float64 `json:"latency"` // seconds, from the time the request was due to its last byte
	Outcome string  `json:"outcome"`
}

type report struct {
	Requests        []result `json:"requests"`
	Seconds         float64  `json:"seconds"` // from the first counted request due to the last answer
	Connections     int64    `json:"connections"`
	ClientCPU       float64  `json:"client_cpu_seconds"`
	LateSends       int64    `json:"late_sends"` // requests sent more than 1 ms after they were due
	FirstErrorsSeen []string `json:"first_errors"`
	OpenFileLimit   uint64   `json:"open_file_limit"`
}

type conn struct {
	tls    *tls.Conn
	reader *bufio.Reader
}

type dialed struct {
	conn *conn
	err  error
}

// pool keeps idle connections the way net/http's Transport does for one host.
type pool struct {
	address string
	config  *tls.Config
	idle    chan *conn
	dials   atomic.Int64
}

func (p *pool) dial() (*conn, error) {
	p.dials.Add(1)
	raw, err := net.DialTimeout("tcp", p.address, dialTimeout)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	secure := tls.Client(raw, p.config)
	if err := secure.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return &conn{tls: secure, reader: bufio.NewReaderSize(secure, 16<<10)}, nil
}

// put keeps a connection for the next request, or closes it when enough are idle.
func (p *pool) put(c *conn) {
	select {
	case p.idle <- c:
	default:
		c.tls.Close()
	}
}

// get returns an idle connection, or the first of a new one and one that another request frees.
func (p *pool) get(deadline time.Time) (*conn, error) {
	select {
	case c := <-p.idle:
		return c, nil
	default:
	}
	mine := make(chan dialed, 1)
	go func() {
		c, err := p.dial()
		mine <- dialed{c, err}
	}()
	// The dial outlives this request if something else comes first; its connection is pooled.
	keepForOthers := func() {
		go func() {
			if d := <-mine; d.err == nil {
				p.put(d.conn)
			}
		}()
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case c := <-p.idle:
		keepForOthers()
		return c, nil
	case d := <-mine:
		return d.conn, d.err
	case <-timer.C:
		keepForOthers()
		return nil, os.ErrDeadlineExceeded
	}
}

type loader struct {
	pool       *pool
	requests   [][]byte // whole HTTP requests, headers and body
	post       bool     // AdmissionReviews (else GET: any 200 will do)
	timeout    time.Duration
	shedMarker []byte
	lateSends  atomic.Int64
	errMu      sync.Mutex
	errs       []string
}

func (l *loader) noteError(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
}

func (l *loader) one(index int, due time.Time) result {
	deadline := due.Add(l.timeout)
	c, err := l.pool.get(deadline)
	if err != nil {
		return l.failed(due, err)
	}
	c.tls.SetDeadline(deadline)
	if _, err := c.tls.Write(l.requests[index%len(l.requests)]); err != nil {
		c.tls.Close()
		return l.failed(due, err)
	}
	code, body, keepAlive, err := readResponse(c.reader)
	latency := time.Since(due).Seconds()
	if err != nil {
		c.tls.Close()
		return l.failed(due, err)
	}
	if keepAlive {
		c.tls.SetDeadline(time.Time{})
		l.pool.put(c)
	} else {
		c.tls.Close()
	}
	switch {
	case code != 200:
		return result{latency, status}
	case !l.post:
		return result{latency, full}
	case !bytes.Contains(body, []byte(`"allowed":true`)):
		// The webhook writes compact JSON: a byte search is enough, at a fraction of a decode.
		l.noteError(fmt.Errorf("200 without allowed: true: %.200s", body))
		return result{latency, status}
	case len(l.shedMarker) > 0 && bytes.Contains(body, l.shedMarker):
		return result{latency, shed}
	}
	return result{latency, full}
}

func (l *loader) failed(due time.Time, err error) result {
	latency := time.Since(due).Seconds()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return result{latency, timeout}
	}
	l.noteError(err)
	return result{latency, connError}
}

// readResponse reads one HTTP/1.1 response with a Content-Length (what uvicorn sends).
func readResponse(reader *bufio.Reader) (code int, body []byte, keepAlive bool, err error) {
	line, err := reader.ReadSlice('\n')
	if err != nil {
		return 0, nil, false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, nil, false, fmt.Errorf("not an HTTP/1.1 status line: %q", line)
	}
	code, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, false, fmt.Errorf("bad status line %q", line)
	}
	length, keepAlive := -1, true
	for {
		line, err = reader.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		header := bytes.TrimRight(line, "\r\n")
		if len(header) == 0 {
			break
		}
		name, value, _ := bytes.Cut(header, []byte(":"))
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("content-length")):
			if length, err = strconv.Atoi(string(value)); err != nil {
				return 0, nil, false, fmt.Errorf("bad content-length %q", value)
			}
		case bytes.EqualFold(name, []byte("connection")) && bytes.EqualFold(value, []byte("close")):
			keepAlive = false
		}
	}
	if length < 0 {
		return 0, nil, false, errors.New("response without content-length")
	}
	body = make([]byte, length)
	_, err = io.ReadFull(reader, body)
	return code, body, keepAlive, err
}

// open sends at a fixed rate for seconds, after a ramp from nothing to that rate (not counted):
// an API server under a burst opens its connections as the requests grow, as a ReplicaSet's
// batches of 1, 2, 4... pods make them grow, rather than all in the first millisecond.
func (l *loader) open(rate, seconds, ramp float64) []result {
	warmUp := int(rate * ramp / 2) // the i-th is due at sqrt(2 * ramp * i / rate)
	total := int(rate * seconds)
	results := make([]result, total)
	var wait sync.WaitGroup
	start := time.Now()
	for index := 0; index < warmUp+total; index++ {
		at := ramp + float64(index-warmUp)/rate
		if index < warmUp {
			at = math.Sqrt(2 * ramp * float64(index) / rate)
		}
		due := start.Add(time.Duration(at * float64(time.Second)))
		if delay := time.Until(due); delay > 0 {
			time.Sleep(delay)
		} else if -delay > time.Millisecond && index >= warmUp {
			l.lateSends.Add(1)
		}
		wait.Add(1)
		go func(index int, due time.Time) {
			defer wait.Done()
			answer := l.one(index, due)
			if index >= warmUp {
				results[index-warmUp] = answer
			}
		}(index, due)
	}
	wait.Wait()
	return results
}

func (l *loader) closed(workers int, seconds float64) []result {
	var mu sync.Mutex
	var results []result
	var wait sync.WaitGroup
	var next atomic.Int64
	end := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for worker := 0; worker < workers; worker++ {
		wait.Add(1)
		go func() {
			defer wait.Done()
			var mine []result
			for time.Now().Before(end) {
				mine = append(mine, l.one(int(next.Add(1)), time.Now()))
			}
			mu.Lock()
			results = append(results, mine...)
			mu.Unlock()
		}()
	}
	wait.Wait()
	return results
}

func readBodies(path string) [][]byte {
	file, err := os.Open(path)
	if err != nil {
		fail(err)
	}
	defer file.Close()
	var bodies [][]byte
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		if line := bytes.TrimSpace(scanner.Bytes()); len(line) > 0 {
			bodies = append(bodies, append([]byte(nil), line...))
		}
	}
	if err := scanner.Err(); err != nil {
		fail(err)
	}
	if len(bodies) == 0 {
		fail(fmt.Errorf("%s: no request bodies (one JSON document a line)", path))
	}
	return bodies
}

// httpRequests are the requests to send, in turn: a POST for each body, or one GET.
func httpRequests(target *url.URL, bodies [][]byte) [][]byte {
	path := target.RequestURI()
	if len(bodies) == 0 {
		return [][]byte{[]byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, target.Host))}
	}
	requests := make([][]byte, len(bodies))
	for index, body := range bodies {
		head := fmt.Sprintf(
			"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
				"Accept: application/json\r\nContent-Length: %d\r\n\r\n",
			path, target.Host, len(body),
		)
		requests[index] = append([]byte(head), body...)
	}
	return requests
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// raiseOpenFileLimit lifts this process's open-file limit as far as it may, to fs.nr_open (at most
// 1<<20) when it runs as root, else to its hard limit: the API server runs with a limit far above
// the connections a webhook under overload makes it hold (every request that finds no idle
// connection dials one, and a dial the webhook leaves queued lasts until its answer), and the
// load generator's own "too many open files" must not count as the webhook's.
func raiseOpenFileLimit() uint64 {
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err != nil {
		return 0
	}
	want := uint64(1 << 20)
	if text, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if most, err := strconv.ParseUint(strings.TrimSpace(string(text)), 10, 64); err == nil {
			want = min(want, most)
		}
	}
	if want > limit.Max {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
			return want
		}
	}
	limit.Cur = limit.Max
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &limit) != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit)
	}
	return limit.Cur
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "loadgen:", err)
	os.Exit(2)
}

func main() {
	target := flag.String("url", "", "https://HOST:PORT/PATH")
	caFile := flag.String("ca", "", "CA certificate (PEM) the server's certificate chains to")
	mode := flag.String("mode", "open", "open (fixed rate) or closed (back-to-back workers)")
	rate := flag.Float64("rate", 1000, "open: requests per second")
	seconds := flag.Float64("seconds", 10, "how long to send")
	ramp := flag.Float64("ramp", 0, "open: seconds to reach -rate from nothing first (not counted)")
	workers := flag.Int("workers", 4, "closed: concurrent workers")
	bodiesFile := flag.String("bodies", "", "POST these bodies (one JSON document a line), else GET")
	requestTimeout := flag.Duration("timeout", 5*time.Second, "the webhook's timeoutSeconds")
	idle := flag.Int("idle-connections", 25, "idle keep-alive connections kept (the API server's 25)")
	shedMarker := flag.String("shed-marker", "", "POST: a 200 whose body contains this was shed")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the load generator here")
	flag.Parse()
	openFileLimit := raiseOpenFileLimit()
	if *cpuProfile != "" {
		out, err := os.Create(*cpuProfile)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	if *target == "" || *caFile == "" {
		fail(errors.New("-url and -ca are required"))
	}
	parsed, err := url.Parse(*target)
	if err != nil || parsed.Scheme != "https" {
		fail(fmt.Errorf("-url must be https://HOST:PORT/PATH, got %q", *target))
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail(fmt.Errorf("%s: no certificate", *caFile))
	}
	// The API server announces its deadline in whole seconds, rounded up (dispatcher.go).
	query := parsed.Query()
	query.Set("timeout", fmt.Sprintf("%ds", int((*requestTimeout+time.Second-1)/time.Second)))
	parsed.RawQuery = query.Encode()
	var bodies [][]byte
	if *bodiesFile != "" {
		bodies = readBodies(*bodiesFile)
	}
	l := &loader{
		pool: &pool{
			address: parsed.Host,
			config: &tls.Config{
				RootCAs:    roots,
				ServerName: parsed.Hostname(),
				NextProtos: []string{"http/1.1"},
				// A request in one TLS record, one write: Go would otherwise start each connection
				// with 1 kB records, and on this machine a starved load generator's requests then
				// reach the webhook in pieces.
				DynamicRecordSizingDisabled: true,
			},
			idle: make(chan *conn, *idle),
		},
		requests:   httpRequests(parsed, bodies),
		post:       len(bodies) > 0,
		timeout:    *requestTimeout,
		shedMarker: []byte(*shedMarker),
	}
	cpuBefore := cpuSeconds()
	started := time.Now()
	var results []result
	switch *mode {
	case "open":
		results = l.open(*rate, *seconds, *ramp)
		started = started.Add(time.Duration(*ramp * float64(time.Second)))
	case "closed":
		results = l.closed(*workers, *seconds)
	default:
		fail(fmt.Errorf("unknown -mode %q", *mode))
	}
	out := report{
		Requests:        results,
		Seconds:         time.Since(started).Seconds(),
		Connections:     l.pool.dials.Load(),
		ClientCPU:       cpuSeconds() - cpuBefore,
		LateSends:       l.lateSends.Load(),
		FirstErrorsSeen: l.errs,
		OpenFileLimit:   openFileLimit,
	}
	if out.FirstErrorsSeen == nil {
		out.FirstErrorsSeen = []string{}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}
