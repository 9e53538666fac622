"""The HTTP/1.1 data plane: the per-request path, compiled with mypyc in regular installs.

seam      what a data plane uses of the routing runtime (Request, Selection, Route, Router)
proxy     ProxyServer and start_proxy: the listening socket, timeout tick, idle sweep, drain
listener  ClientProtocol: one client connection's httptools callbacks, pipelining, refusals
head      pure head processing: framing, target, client address, request id, forwarded head
routing   RouteTable: first-match route lookup indexed by prefix length (flat at 1,000 routes)
exchange  Exchange: one request and its response through the proxy (retries, timeouts)
upstream  UpstreamPool and UpstreamConnection: keep-alive connections to one backend
feedback  the /_modelrouter/feedback endpoint
mirror    shadow traffic to a route's mirror backend
endpoints a backend's endpoints: one pool each, balancing, outlier detection, retry budget
balance   pure: least-outstanding / power-of-two-choices endpoint picking
outlier   pure: Envoy-style outlier ejection of endpoints
retry     pure: what may be sent twice, and the retry budget
answers   status lines and the JSON answers the proxy sends itself
"""
