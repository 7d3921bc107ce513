"""Run the simulator: ``python -m quorum.simulator --port 8000 ...``."""

from quorum.simulator.server import main

if __name__ == "__main__":
    main()
