module netpol-sniffer/bench/loadgen

go 1.22
