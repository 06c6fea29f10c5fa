"""`python -m phantom KIND --out DIR` (`cxr-sweep phantom`): write a phantom source set in its real format."""
import sys

from phantom.generate import main

sys.exit(main())
