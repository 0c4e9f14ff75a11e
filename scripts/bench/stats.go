package main

import (
	"math"
	"slices"
)

// summary is the distribution of a set of samples, in milliseconds.
type summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	Min   float64 `json:"min_ms"`
}

// summarize returns the nearest-rank percentiles of samples (ms).
func summarize(samples []float64) summary {
	if len(samples) == 0 {
		return summary{}
	}
	s := sorted(samples)
	return summary{
		Count: len(s),
		P50:   round(percentile(s, 50)),
		P90:   round(percentile(s, 90)),
		P99:   round(percentile(s, 99)),
		Max:   round(s[len(s)-1]),
		Min:   round(s[0]),
	}
}

// sorted returns a sorted copy of v.
func sorted(v []float64) []float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// median is the middle of sorted samples (the mean of the two middle ones
// for an even count).
func median(sorted []float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// round keeps one decimal, which is all a millisecond figure needs.
func round(v float64) float64 { return math.Round(v*10) / 10 }

// mean is the average of v, 0 for none.
func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}
