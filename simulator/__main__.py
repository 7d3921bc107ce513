"""Run the simulator: ``python -m simulator --port 8000 ...``."""

from simulator.server import main

if __name__ == "__main__":
    main()
