"""The results database and what is made from it. Imports none of the other packages, so a
report can be made on a laptop from a copied DB."""
