"""Run the quick-start demo from a checkout: `python demo.py --help`."""

from udp_price.cli.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
