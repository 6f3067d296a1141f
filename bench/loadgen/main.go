// Command loadgen sends AdmissionReviews to the webhook over TLS the way a kube-apiserver does, and
// prints what came back as JSON on stdout. It is bench/admission_latency.py's load generator: a
// Python client on the same small machine runs out of CPU before the webhook does.
//
// Like the API server's webhook client (k8s.io/apiserver/pkg/util/webhook): HTTP/1.1 only (ALPN
// http/1.1), keep-alive with 25 idle connections per host, no limit on open connections, a
// deadline of -timeout per request, announced in ?timeout=. Each request that finds no idle
// connection opens a new one, so a slow webhook sees more and more connections and handshakes.
//
// Modes:
//   - open: request i is due at start + i/rate whatever happened before (open loop); its latency
//     is counted from when it was due, so queueing anywhere counts (no coordinated omission).
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
	"net"
	"net/http"
	"os"
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

type result struct {
	Latency float64 `json:"latency"` // seconds, from the time the request was due to its last byte
	Outcome string  `json:"outcome"`
}

type report struct {
	Requests        []result `json:"requests"`
	Seconds         float64  `json:"seconds"` // from the first request due to the last answer
	Connections     int64    `json:"connections"`
	ClientCPU       float64  `json:"client_cpu_seconds"`
	LateSends       int64    `json:"late_sends"` // requests sent more than 1 ms after they were due
	FirstErrorsSeen []string `json:"first_errors"`
}

type loader struct {
	client      *http.Client
	url         string
	method      string
	bodies      [][]byte
	timeout     time.Duration
	shedMarker  []byte
	connections atomic.Int64
	errMu       sync.Mutex
	errs        []string
}

func (l *loader) noteError(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
}

func (l *loader) one(index int, due time.Time) result {
	ctx, cancel := context.WithDeadline(context.Background(), due.Add(l.timeout))
	defer cancel()
	var body io.Reader
	if l.method == http.MethodPost {
		body = bytes.NewReader(l.bodies[index%len(l.bodies)])
	}
	request, err := http.NewRequestWithContext(ctx, l.method, l.url, body)
	if err != nil {
		panic(err)
	}
	request.Header.Set("Content-Type", "application/json")
	request.Header.Set("Accept", "application/json")
	answer, err := l.client.Do(request)
	var data []byte
	if err == nil {
		data, err = io.ReadAll(answer.Body)
		answer.Body.Close()
	}
	latency := time.Since(due).Seconds()
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return result{latency, timeout}
	case err != nil:
		l.noteError(err)
		return result{latency, connError}
	case answer.StatusCode != http.StatusOK:
		return result{latency, status}
	case l.method == http.MethodPost && !allowed(data):
		l.noteError(fmt.Errorf("200 without allowed: true: %.200s", data))
		return result{latency, status}
	case len(l.shedMarker) > 0 && bytes.Contains(data, l.shedMarker):
		return result{latency, shed}
	}
	return result{latency, full}
}

// allowed tells whether an answer allows the pod. The webhook writes compact JSON, so a byte
// search does, at a fraction of a JSON decode's CPU: this process shares the machine with the
// webhook it measures.
func allowed(data []byte) bool {
	return bytes.Contains(data, []byte(`"allowed":true`))
}

func (l *loader) open(rate float64, seconds float64) []result {
	total := int(rate * seconds)
	results := make([]result, total)
	var wait sync.WaitGroup
	start := time.Now()
	for index := 0; index < total; index++ {
		due := start.Add(time.Duration(float64(index) / rate * float64(time.Second)))
		if delay := time.Until(due); delay > 0 {
			time.Sleep(delay)
		} else if -delay > time.Millisecond {
			lateSends.Add(1)
		}
		wait.Add(1)
		go func(index int, due time.Time) {
			defer wait.Done()
			results[index] = l.one(index, due)
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

var lateSends atomic.Int64

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

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
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
	workers := flag.Int("workers", 4, "closed: concurrent workers")
	bodiesFile := flag.String("bodies", "", "POST these bodies (one JSON document a line), else GET")
	requestTimeout := flag.Duration("timeout", 5*time.Second, "the webhook's timeoutSeconds")
	idle := flag.Int("idle-connections", 25, "idle keep-alive connections kept (the API server's 25)")
	shedMarker := flag.String("shed-marker", "", "a 200 whose body contains this was shed")
	keepAlive := flag.Bool("keepalive", true, "false: a new TLS connection for every request")
	flag.Parse()
	if *target == "" || *caFile == "" {
		fail(errors.New("-url and -ca are required"))
	}
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail(fmt.Errorf("%s: no certificate", *caFile))
	}
	l := &loader{method: http.MethodGet, timeout: *requestTimeout, shedMarker: []byte(*shedMarker)}
	if *bodiesFile != "" {
		l.method = http.MethodPost
		l.bodies = readBodies(*bodiesFile)
	}
	// The API server announces its deadline; whole seconds, rounded up (dispatcher.go).
	sep := "?"
	if strings.Contains(*target, "?") {
		sep = "&"
	}
	l.url = fmt.Sprintf("%s%stimeout=%ds", *target, sep, int((*requestTimeout+time.Second-1)/time.Second))
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	l.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			l.connections.Add(1)
			return dialer.DialContext(ctx, network, address)
		},
		TLSClientConfig:     &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: *idle,
		IdleConnTimeout:     90 * time.Second,
		DisableKeepAlives:   !*keepAlive,
	}}
	cpuBefore := cpuSeconds()
	started := time.Now()
	var results []result
	switch *mode {
	case "open":
		results = l.open(*rate, *seconds)
	case "closed":
		results = l.closed(*workers, *seconds)
	default:
		fail(fmt.Errorf("unknown -mode %q", *mode))
	}
	out := report{
		Requests:        results,
		Seconds:         time.Since(started).Seconds(),
		Connections:     l.connections.Load(),
		ClientCPU:       cpuSeconds() - cpuBefore,
		LateSends:       lateSends.Load(),
		FirstErrorsSeen: l.errs,
	}
	if out.FirstErrorsSeen == nil {
		out.FirstErrorsSeen = []string{}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}
