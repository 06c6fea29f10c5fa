"""`python -m phantom KIND --out DIR`: write a phantom source set in its real format."""
import sys

from phantom.generate import main

sys.exit(main())
