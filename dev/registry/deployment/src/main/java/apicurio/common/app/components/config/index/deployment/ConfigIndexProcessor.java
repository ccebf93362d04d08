package apicurio.common.app.components.config.index.deployment;

// Re-creation of the build step of io.apicurio:apicurio-common-app-components-config-index-deployment
// 0.1.x (Apache-2.0, github.com/Apicurio/apicurio-common-app-components), whose jar is not on Maven Central.
// It collects the @Dynamic @ConfigProperty injection points and registers a synthetic
// DynamicConfigPropertyList bean built by the runtime recorder.

import apicurio.common.app.components.config.index.DynamicPropertiesInfoRecorder;
import io.apicurio.common.apps.config.Dynamic;
import io.apicurio.common.apps.config.DynamicConfigPropertyDef;
import io.apicurio.common.apps.config.DynamicConfigPropertyList;
import io.quarkus.arc.deployment.BeanDiscoveryFinishedBuildItem;
import io.quarkus.arc.deployment.SyntheticBeanBuildItem;
import io.quarkus.arc.processor.InjectionPointInfo;
import io.quarkus.deployment.annotations.BuildProducer;
import io.quarkus.deployment.annotations.BuildStep;
import io.quarkus.deployment.annotations.ExecutionTime;
import io.quarkus.deployment.annotations.Record;
import io.quarkus.runtime.RuntimeValue;
import org.eclipse.microprofile.config.inject.ConfigProperty;
import org.jboss.jandex.AnnotationInstance;
import org.jboss.jandex.AnnotationValue;
import org.jboss.jandex.DotName;
import org.jboss.jandex.Type;

import java.util.List;
import java.util.stream.Collectors;

public class ConfigIndexProcessor {

    private static final DotName CONFIG_PROPERTY = DotName.createSimple(ConfigProperty.class.getName());
    private static final DotName DYNAMIC = DotName.createSimple(Dynamic.class.getName());

    @BuildStep
    @Record(ExecutionTime.RUNTIME_INIT)
    void syntheticBean(DynamicPropertiesInfoRecorder recorder, BeanDiscoveryFinishedBuildItem beanDiscovery,
            BuildProducer<SyntheticBeanBuildItem> syntheticBeans) {
        List<DynamicConfigPropertyDef> dynamicProperties = beanDiscovery.getInjectionPoints().stream()
                .filter(ConfigIndexProcessor::isDynamicConfigProperty).map(ip -> {
                    try {
                        AnnotationInstance configPropertyAI = ip.getRequiredQualifier(CONFIG_PROPERTY);
                        AnnotationInstance dynamicAI = ip.getRequiredQualifier(DYNAMIC);
                        Type supplierType = ip.getRequiredType();
                        Type actualType = supplierType.asParameterizedType().arguments().get(0);
                        String propertyName = configPropertyAI.value("name").asString();
                        Class<?> propertyType = Class.forName(actualType.name().toString());
                        AnnotationValue defaultValueAV = configPropertyAI.value("defaultValue");
                        if (defaultValueAV == null) {
                            throw new RuntimeException("Dynamic configuration property '" + propertyName
                                    + "' must have a default value.");
                        }
                        DynamicConfigPropertyDef def = new DynamicConfigPropertyDef(propertyName, propertyType,
                                defaultValueAV.asString());
                        AnnotationValue labelAV = dynamicAI.value("label");
                        AnnotationValue descriptionAV = dynamicAI.value("description");
                        AnnotationValue requiresAV = dynamicAI.value("requires");
                        if (labelAV != null) {
                            def.setLabel(labelAV.asString());
                        }
                        if (descriptionAV != null) {
                            def.setDescription(descriptionAV.asString());
                        }
                        if (requiresAV != null) {
                            def.setRequires(requiresAV.asStringArray());
                        }
                        return def;
                    } catch (Exception e) {
                        throw new RuntimeException("Invalid @Dynamic config property " + ip, e);
                    }
                }).collect(Collectors.toList());

        RuntimeValue<DynamicConfigPropertyList> value = recorder.initializePropertiesInfo(dynamicProperties);
        syntheticBeans.produce(SyntheticBeanBuildItem.configure(DynamicConfigPropertyList.class)
                .runtimeValue(value).unremovable().setRuntimeInit().done());
    }

    private static boolean isDynamicConfigProperty(InjectionPointInfo ip) {
        return ip.getRequiredQualifier(CONFIG_PROPERTY) != null && ip.isField()
                && ip.getTarget().asField().annotation(DYNAMIC) != null;
    }
}
