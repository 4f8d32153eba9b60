"""The public benchmarks `python -m pipeline.datasets` knows: where each file comes from, where it goes, its checksum.

A file lands at ``<root>/data/<dataset>/<file name>``, the path the catalogs reference
(``catalogs/<dataset>.yaml`` reads ``../data/<dataset>/<file name>``).

Provenance of the URLs and checksums (no network was available when this registry was written,
so no URL below has been fetched from here):

- checksums marked "shared/data" were computed with ``sha256sum`` on the copies in the project's
  shared test data, which came from these mirrors;
- checksums marked "LFS pointer" are the ``oid sha256`` of the Git LFS pointer committed in the
  mirror repository at the pinned commit, i.e. the sha256 of the file that mirror serves;
- checksums marked "third party" were published by another project that pins the same file
  (rs-fusion-datasets by songyz2019); they are used as published.

Every URL pins a commit or a tag, so the bytes (and the checksum) cannot move under us. A file with
no checksum is downloaded, its sha256 reported, and it is marked "unverified".
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.errors import InputError


@dataclass(frozen=True)
class DatasetFile:
    """One file of a dataset.

    Args:
        name: file name under ``data/<dataset>/``, as the catalog references it. A mirror given with
            ``--mirror BASE`` serves it at ``BASE/<name>``.
        urls: public mirrors, tried in order. Empty: no public mirror, the file is downloaded by hand.
        sha256: the checksum the download must have; None when the project cannot know it.
        size: size in bytes where known (for the progress bar when the server does not send it).
        alt_sha256: other published byte-versions of the same file that are accepted as well.
        provenance: where ``urls`` and ``sha256`` come from.
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None = None
    alt_sha256: tuple[str, ...] = ()
    provenance: str = ""

    @property
    def accepted_sha256(self) -> tuple[str, ...]:
        """Every checksum a download of this file may have; empty when none is known."""
        return (self.sha256, *self.alt_sha256) if self.sha256 is not None else self.alt_sha256


@dataclass(frozen=True)
class Dataset:
    """A benchmark: its files and how to get them by hand when no mirror answers."""

    name: str
    title: str
    files: tuple[DatasetFile, ...]
    homepage: str
    manual: str
    license: str
    citation: str
    registration_required: bool = False


def _github_raw(repo: str, ref: str, path: str) -> str:
    """URL of a file committed to a GitHub repository (ordinary Git blob)."""
    return f"https://raw.githubusercontent.com/{repo}/{ref}/{path}"


def _github_lfs(repo: str, ref: str, path: str) -> tuple[str, str]:
    """URLs of a file stored with Git LFS: the media host, then github.com/raw (which redirects there)."""
    return (
        f"https://media.githubusercontent.com/media/{repo}/{ref}/{path}",
        f"https://github.com/{repo}/raw/{ref}/{path}",
    )


# Trento: tyust-dayu/Trento at a pinned commit, the layout Italy_hsi.mat / Italy_lidar.mat / allgrd.mat.
# Confirmed: the repository holds Italy_lidar.mat and allgrd.mat as plain Git blobs at this commit, and another
# project downloads this commit's archive. Not confirmed: the raw.githubusercontent.com URLs themselves.
_TRENTO_REPO = "tyust-dayu/Trento"
_TRENTO_REF = "b4afc449ce5d6936ddc04fe267d86f9f35536afd"

TRENTO = Dataset(
    name="trento",
    title="Trento (HS 63 bands + LiDAR, 166 x 600, 6 classes)",
    files=(
        DatasetFile(
            "Italy_hsi.mat",
            (_github_raw(_TRENTO_REPO, _TRENTO_REF, "Italy_hsi.mat"),),
            sha256="7b965fd405314b5c91451042e547a1923be6f5a38c6da83969032cff79729280",
            provenance="third party (rs-fusion-datasets pins the same commit; its hashes of the two "
            "other files match shared/data byte for byte)",
        ),
        DatasetFile(
            "Italy_lidar.mat",
            (_github_raw(_TRENTO_REPO, _TRENTO_REF, "Italy_lidar.mat"),),
            sha256="a04dc90368d6a7b4f9d3936024ba9fef4105456c090daa14fff31b8b79e94ab1",
            size=404109,
            provenance="shared/data",
        ),
        DatasetFile(
            "allgrd.mat",
            (_github_raw(_TRENTO_REPO, _TRENTO_REF, "allgrd.mat"),),
            sha256="7e3fb2a2ea22c2661dfc768db3cb93c9643b324e7e64fadedfa57f5edbf1818f",
            size=3235,
            provenance="shared/data",
        ),
    ),
    homepage=f"https://github.com/{_TRENTO_REPO}",
    manual="the three files are at the top of the repository at commit " + _TRENTO_REF[:12] + ".",
    license="No license stated by the mirror; data by L. Bruzzone, University of Trento, for research use.",
    citation="Cite the Trento dataset as provided by L. Bruzzone (University of Trento) in your work.",
)

# MUUFL Gulfport: the HSI.mat / LiDAR.mat / gt.mat layout (keys HSI, LiDAR, gt) as mirrored with Git LFS
# in zlyrs1/MACL, plus GatorSense's original file with the scene labels and band wavelengths.
# Confirmed: the LFS pointers at the MACL commit (LiDAR.mat's oid and size equal the shared/data copy) and the
# scene-label file's path in GatorSense/MUUFLGulfport. Not confirmed: the media/raw URLs themselves.
_MACL_REPO = "zlyrs1/MACL"
_MACL_REF = "49a681832fe342fb6a7b93a1f84561082da4898b"
_GATORSENSE_REPO = "GatorSense/MUUFLGulfport"
_GATORSENSE_REF = "v0.1"

MUUFL = Dataset(
    name="muufl",
    title="MUUFL Gulfport (HS 64 bands + LiDAR, 325 x 220, 11 classes)",
    files=(
        DatasetFile(
            "HSI.mat",
            _github_lfs(_MACL_REPO, _MACL_REF, "datasets/MUUFL/HSI.mat"),
            sha256="66132d97e8e090b63ec28a1a7a92c85c18e4226a76ba703eb43b0d44b1ff5938",
            size=18304192,
            provenance="LFS pointer",
        ),
        DatasetFile(
            "LiDAR.mat",
            _github_lfs(_MACL_REPO, _MACL_REF, "datasets/MUUFL/LiDAR.mat"),
            sha256="6ff05737867f68ba381807564f431eafa8e603434971988767953122103ec09b",
            size=572200,
            provenance="shared/data; equal to the mirror's LFS pointer",
        ),
        DatasetFile(
            "gt.mat",
            _github_lfs(_MACL_REPO, _MACL_REF, "datasets/MUUFL/gt.mat"),
            sha256="32746e45d4f9aacfa8a34f2338a5ea4af4e2024a0219c543800a06733fc3b419",
            size=8279,
            # The MACL mirror holds another byte-version of gt.mat (8,278 bytes, LFS pointer): a MAT-file
            # written separately; its label content has not been compared with the shared/data copy.
            alt_sha256=("648967362dbfabc7777cfb637382c56f8fb805e067dc7c9ab18273ca6739c0b5",),
            provenance="shared/data (8,279 bytes); the mirror's version per its LFS pointer",
        ),
        DatasetFile(
            "muufl_gulfport_campus_1_hsi_220_label.mat",
            (
                _github_raw(
                    _GATORSENSE_REPO,
                    _GATORSENSE_REF,
                    "MUUFLGulfportSceneLabels/muufl_gulfport_campus_1_hsi_220_label.mat",
                ),
            ),
            sha256="69420a72866dff4a858ae503e6e2981af46f406a4ad8f4dd642efa43feb59edc",
            provenance="third party (rs-fusion-datasets, file inside the v0.1 tag archive)",
        ),
    ),
    homepage=f"https://github.com/{_GATORSENSE_REPO}",
    manual=(
        "HSI.mat, LiDAR.mat and gt.mat are in https://github.com/zlyrs1/MACL under datasets/MUUFL/ "
        "(Git LFS: use the 'Download raw file' button); muufl_gulfport_campus_1_hsi_220_label.mat is in "
        "GatorSense/MUUFLGulfport under MUUFLGulfportSceneLabels/."
    ),
    license="MIT (GatorSense/MUUFLGulfport).",
    citation=(
        "P. Gader, A. Zare, R. Close, J. Aitken, G. Tuell, 'MUUFL Gulfport Hyperspectral and LiDAR Airborne "
        "Data Set', University of Florida, Tech. Rep. REP-2013-570, 2013; X. Du, A. Zare, 'Scene Label Ground "
        "Truth Map for MUUFL Gulfport Data Set', University of Florida, Tech. Rep. 20170417, 2017."
    ),
)

# Houston 2013: distributed by the IEEE GRSS Data Fusion Contest after registration; the files keep the
# contest's names. No public mirror is registered here (the distributor asks users to register). The
# distribution page is the one several public READMEs cite; not opened from here.
_HOUSTON_PAGE = "https://machinelearning.ee.uh.edu/2013-ieee-grss-data-fusion-contest/"

HOUSTON2013 = Dataset(
    name="houston2013",
    title="Houston 2013, IEEE GRSS DFC 2013 (HS 144 bands + LiDAR DSM, 349 x 1905, 15 classes)",
    files=(
        DatasetFile("2013_IEEE_GRSS_DF_Contest_CASI.tif", (), sha256=None),
        DatasetFile("2013_IEEE_GRSS_DF_Contest_LiDAR.tif", (), sha256=None),
        DatasetFile("2013_IEEE_GRSS_DF_Contest_Samples_TR.txt", (), sha256=None),
        DatasetFile("2013_IEEE_GRSS_DF_Contest_Samples_VA.txt", (), sha256=None),
    ),
    homepage=_HOUSTON_PAGE,
    manual=(
        "register with the IEEE GRSS Data Fusion Contest there, download the 2013 contest bundle and copy "
        "these files out of it."
    ),
    license="Free for research after registration with the IEEE GRSS; acknowledge the GRSS DFC and NCALM.",
    citation=(
        "C. Debes et al., 'Hyperspectral and LiDAR Data Fusion: Outcome of the 2013 GRSS Data Fusion "
        "Contest', IEEE JSTARS 7(6), 2405-2418, 2014."
    ),
    registration_required=True,
)

# Augsburg HS-SAR-DSM (Hong et al. 2021): the authors distribute one archive (Google Drive / Baidu); four
# of the five files are mirrored with Git LFS in Weikan0425/M2Heat_HSI_LiDAR (confirmed: the LFS pointers at
# this commit; not confirmed: the media/raw URLs themselves). No public mirror of data_SAR_HR.mat was found:
# it comes from the authors' archive by hand (the archive is a Google Drive page, not a direct download).
_AUGSBURG_REPO = "Weikan0425/M2Heat_HSI_LiDAR"
_AUGSBURG_REF = "14c00db9102fe00f3753a7ac5b6528c4432693cd"
_AUGSBURG_ARCHIVE = "https://drive.google.com/file/d/1dLJJrNJpQoQeDHybs37iGxmrSU6aP2xv/view?usp=sharing"

AUGSBURG = Dataset(
    name="augsburg",
    title="Augsburg HS-SAR-DSM (HS 180 bands + SAR 4 bands + DSM, 332 x 485, 7 classes)",
    files=(
        DatasetFile(
            "data_HS_LR.mat",
            _github_lfs(_AUGSBURG_REPO, _AUGSBURG_REF, "datasets/Augsburg/data_HS_LR.mat"),
            sha256="6146ccb08f676ee3fd38594184e06cad1f9c177b944442ccf8f86f33a1a9782d",
            size=47832009,
            provenance="LFS pointer",
        ),
        DatasetFile("data_SAR_HR.mat", (), sha256=None, provenance="no public mirror found"),
        DatasetFile(
            "data_DSM.mat",
            _github_lfs(_AUGSBURG_REPO, _AUGSBURG_REF, "datasets/Augsburg/data_DSM.mat"),
            sha256="b4c59568e38ce472db43672f3f1aa41eab9d43d8c95faa0dc0623573b59d765b",
            size=1146923,
            provenance="LFS pointer",
        ),
        DatasetFile(
            "TrainImage.mat",
            _github_lfs(_AUGSBURG_REPO, _AUGSBURG_REF, "datasets/Augsburg/TrainImage.mat"),
            sha256="b912b3807b703cbd511ba0e64fd8e5e040a59abc7ff6d51193dda0868c516d45",
            size=1898,
            provenance="LFS pointer",
        ),
        DatasetFile(
            "TestImage.mat",
            _github_lfs(_AUGSBURG_REPO, _AUGSBURG_REF, "datasets/Augsburg/TestImage.mat"),
            sha256="87f9c9e0436007768ca7738c300b7c7812541e7043c69addd81c48c3bdc3c9fd",
            size=26679,
            provenance="LFS pointer",
        ),
    ),
    homepage="https://github.com/danfenghong/ISPRS_S2FL",
    manual=(
        "the authors' archive (linked from https://github.com/danfenghong/ISPRS_S2FL: Google Drive "
        + _AUGSBURG_ARCHIVE
        + ", or Baidu https://pan.baidu.com/s/14OQW-9EpGRODOEnWfBXnag, code ekqq) holds the five files in "
        "its 'HS-SAR-DSM Augsburg' folder."
    ),
    license="Openly released by the authors for research; the accompanying code is GPL-3.0.",
    citation=(
        "D. Hong, J. Hu, J. Yao, J. Chanussot, X. X. Zhu, 'Multimodal remote sensing benchmark datasets for "
        "land cover classification with a shared and specific feature learning model', ISPRS J. "
        "Photogramm. Remote Sens. 178, 68-80, 2021."
    ),
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (TRENTO, HOUSTON2013, AUGSBURG, MUUFL)}


def get_dataset(name: str) -> Dataset:
    """The registered dataset called ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(None, "dataset", "one of " + ", ".join(DATASETS), found=repr(name)) from None
