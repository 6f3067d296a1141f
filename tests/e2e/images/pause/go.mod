module netpol-sniffer.test/pause

go 1.24
