"""Regenerate ``chignolin_cln025_5awl.pdb`` from the heavy-atom crystal structure.

Provenance script, run once by the maintainers (the output is committed):
CLN025 (YYDPETGTWY), PDB 5AWL chain A, heavy atoms only -> hydrogens added by
PDBFixer at pH 7.  Usage: ``python aesample/data/prepare_chignolin.py HEAVY.pdb``.
"""
import sys
from pathlib import Path

from openmm.app import PDBFile
from pdbfixer import PDBFixer

source = sys.argv[1] if len(sys.argv) > 1 else "../../../shared/data/cln025_5awl_heavy.pdb"
fixer = PDBFixer(filename=source)
fixer.findMissingResidues()
fixer.missingResidues = {}  # termini are real chain ends, do not build loops
fixer.findNonstandardResidues()
fixer.findMissingAtoms()
fixer.addMissingAtoms()
fixer.addMissingHydrogens(7.0)
out = Path(__file__).with_name("chignolin_cln025_5awl.pdb")
with open(out, "w") as handle:
    PDBFile.writeFile(fixer.topology, fixer.positions, handle, keepIds=True)
print(f"wrote {out} with {fixer.topology.getNumAtoms()} atoms")
