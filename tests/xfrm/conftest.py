import pathlib
import sys

# golden_cases.py is shared by the tests and by golden_capture.py (run as a script)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
