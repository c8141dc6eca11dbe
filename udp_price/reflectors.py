"""Source ports of UDP services that answer whatever they receive, shared by the server and the proxy.

A datagram "from" one of them is a reflection attempt (spoofed, to make us and that service answer
each other forever) or at best a misconfiguration: real clients send from ephemeral ports. The
server drops such datagrams silently (``refused.source_port``), the fault proxy too
(``up.drop:reflector_port``).
"""

from __future__ import annotations

REFLECTOR_PORTS = frozenset(
    {
        0,  # not a real source port: nothing can answer it, so it is spoofed or broken
        7,  # echo
        9,  # discard
        11,  # systat
        13,  # daytime
        17,  # qotd
        19,  # chargen (the echo/chargen loop, CVE-1999-0103)
        37,  # time
        53,  # DNS
        69,  # TFTP
        111,  # portmap / rpcbind
        123,  # NTP
        137,  # NetBIOS name service
        161,  # SNMP
        162,  # SNMP trap
        389,  # CLDAP
        427,  # SLP
        443,  # QUIC
        500,  # IKE
        520,  # RIP
        1194,  # OpenVPN
        1434,  # MS SQL browser
        1900,  # SSDP
        3283,  # Apple Remote Desktop
        3478,  # STUN / TURN
        3702,  # WS-Discovery
        5060,  # SIP
        5353,  # mDNS
        5683,  # CoAP
        10001,  # Ubiquiti discovery
        11211,  # memcached
    }
)
