# syntax=docker/dockerfile:1
# mono2stereo deployment image, two targets selected by a build argument:
#
#   x86_64 workstation / server with an NVIDIA GPU (ROS 2 Jazzy, Ubuntu 24.04, CUDA 12, TensorRT 10, PyTorch):
#     docker build --build-arg TARGET=x86 -t mono2stereo:x86 .
#   Jetson Orin (JetPack 6 / L4T r36, Ubuntu 22.04, ROS 2 Humble, CUDA + TensorRT 10 from JetPack):
#     docker build --build-arg TARGET=jetson --platform linux/arm64 -t mono2stereo:jetson .
#
# Run (engine cache on a volume so the TensorRT engine is built once per GPU / TensorRT version):
#   docker run --rm --gpus all --network host -v m2s-engines:/var/cache/mono2stereo mono2stereo:x86
# See docs/deploy.md.
ARG TARGET=x86
ARG X86_BASE=ros:jazzy-ros-base-noble
ARG JETSON_BASE=nvcr.io/nvidia/l4t-jetpack:r36.4.0

# ---------------------------------------------------------------------------------------------------------
FROM ${X86_BASE} AS base-x86
ARG CUDA_REPO=ubuntu2404/x86_64
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA runtime and TensorRT 10 come from NVIDIA's CUDA apt repository; the driver comes from the host
# through the NVIDIA Container Toolkit.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget \
    && wget -q "https://developer.download.nvidia.com/compute/cuda/repos/${CUDA_REPO}/cuda-keyring_1.1-1_all.deb" \
        -O /tmp/cuda-keyring.deb \
    && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        cuda-cudart-12-6 libnvinfer10 libnvinfer-plugin10 libnvonnxparsers10 python3-libnvinfer \
    && rm -rf /var/lib/apt/lists/*
ENV ROS_DISTRO=jazzy \
    M2S_INSTALL_TORCH=1

# ---------------------------------------------------------------------------------------------------------
FROM ${JETSON_BASE} AS base-jetson
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# JetPack already carries CUDA, cuDNN and TensorRT (with its Python bindings); ROS 2 Humble comes from the
# ROS apt repository for Ubuntu 22.04.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gnupg2 lsb-release \
    && curl -sSL https://raw.githubusercontent.com/ros/rosdistro/master/ros.key \
        -o /usr/share/keyrings/ros-archive-keyring.gpg \
    && echo "deb [arch=arm64 signed-by=/usr/share/keyrings/ros-archive-keyring.gpg] http://packages.ros.org/ros2/ubuntu jammy main" \
        > /etc/apt/sources.list.d/ros2.list \
    && apt-get update \
    && apt-get install -y --no-install-recommends ros-humble-ros-base \
    && rm -rf /var/lib/apt/lists/*
# On Jetson the network runs through TensorRT only: PyTorch is not installed (export ONNX on a workstation
# or use the ONNX shipped in weights/); device buffers come from cuda-python (CUDA 12.6 as in JetPack 6.1).
ENV ROS_DISTRO=humble \
    M2S_INSTALL_TORCH=0

# ---------------------------------------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM base-${TARGET} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3-pip python3-venv python3-colcon-common-extensions \
        "ros-${ROS_DISTRO}-message-filters" "ros-${ROS_DISTRO}-stereo-msgs" "ros-${ROS_DISTRO}-diagnostic-msgs" \
        "ros-${ROS_DISTRO}-std-srvs" "ros-${ROS_DISTRO}-tf2-ros" "ros-${ROS_DISTRO}-tf2-msgs" \
        "ros-${ROS_DISTRO}-launch-ros" "ros-${ROS_DISTRO}-ros2launch" \
    && rm -rf /var/lib/apt/lists/*

# Non-root runtime user; the engine cache lives on a volume it owns.
RUN useradd --create-home --uid 1000 --shell /bin/bash m2s \
    && mkdir -p /opt/mono2stereo /var/cache/mono2stereo \
    && chown -R m2s:m2s /opt/mono2stereo /var/cache/mono2stereo
WORKDIR /opt/mono2stereo

# A virtualenv that also sees the system's rclpy (from /opt/ros) and TensorRT bindings.
ENV VIRTUAL_ENV=/opt/mono2stereo/venv
RUN python3 -m venv --system-site-packages "$VIRTUAL_ENV" && chown -R m2s:m2s "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

COPY --chown=m2s:m2s pyproject.toml README.md ./
COPY --chown=m2s:m2s requirements/ requirements/
COPY --chown=m2s:m2s mono2stereo_core/ mono2stereo_core/
USER 1000:1000
# Runtime dependencies at the versions pinned for CI (requirements/lock.txt); no ROS wheels (apt provides ROS).
RUN grep -E '^(numpy|opencv-python-headless|pyyaml|tqdm|safetensors|onnx|onnxruntime|rosbags|mcap|mcap-ros2-support|ruamel\.yaml|ruamel\.yaml\.clib|lz4|zstandard|protobuf|typing_extensions|ml_dtypes)==' \
        requirements/lock.txt > /tmp/runtime-requirements.txt \
    && if [ "$M2S_INSTALL_TORCH" = "1" ]; then grep -E '^torch==' requirements/lock.txt >> /tmp/runtime-requirements.txt; \
       else echo "cuda-python==12.6.2.post1" >> /tmp/runtime-requirements.txt; fi \
    && pip install --no-cache-dir -r /tmp/runtime-requirements.txt \
    && pip install --no-cache-dir --no-deps .

COPY --chown=m2s:m2s training/ training/
COPY --chown=m2s:m2s weights/ weights/
COPY --chown=m2s:m2s launch/ launch/
COPY --chown=m2s:m2s config/ config/
COPY --chown=m2s:m2s ros2_ws/src/ ros2_ws/src/
COPY --chown=m2s:m2s docker/entrypoint.sh docker/healthcheck.py docker/

WORKDIR /opt/mono2stereo/ros2_ws
RUN . "/opt/ros/${ROS_DISTRO}/setup.bash" \
    && colcon build --event-handlers console_direct- \
    && rm -rf build log
WORKDIR /opt/mono2stereo

ENV M2S_ENGINE_CACHE=/var/cache/mono2stereo \
    M2S_ONNX=/opt/mono2stereo/weights/m2s_rt_640x480.onnx \
    M2S_PRECISION=fp16 \
    ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET
VOLUME ["/var/cache/mono2stereo"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "/opt/mono2stereo/docker/healthcheck.py"]

ENTRYPOINT ["/opt/mono2stereo/docker/entrypoint.sh"]
CMD []
